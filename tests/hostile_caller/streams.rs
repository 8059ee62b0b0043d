//! Stream and wait floods: a local user opens WatchToken streams, or GetToken calls that wait,
//! by the hundred over many connections. Past its own cap it is refused at once with
//! RESOURCE_EXHAUSTED, another uid still opens its stream and gets its tokens, and the daemon's
//! memory stays bounded. A deadline of years waits no longer than `server.max_wait`.

use std::time::Duration;

use tokend::proto::{GetTokenRequest, WatchTokenRequest};
use tokend::testing::TokenService;
use tonic::{Code, Request};

use crate::common::in_process::InProcess;
use crate::common::{Daemon, secret_file};
use crate::fault::{FaultEndpoint, Reply};
use crate::other_uid::{Calls, OtherUid, count};

const NOBODY: u32 = 65534;

/// A daemon whose socket and directory another uid can reach, with `server` keys, serving
/// `app` (short-lived tokens, so that streams see rotations) and, if given, `slow` (whose
/// endpoint takes a minute) to any local user.
async fn daemon(app: &FaultEndpoint, slow: Option<&FaultEndpoint>, server: &str) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    secret_file(dir.path(), "secret", "s3cret");
    let client = |name: &str, url: &str| {
        format!(
            "[clients.{name}]\ntoken_endpoint = \"{url}\"\nclient_id = \"{name}\"\n\
             client_secret_file = \"{{dir}}/secret\"\nrequired = false\n"
        )
    };
    let mut clients = client("app", &app.url);
    if let Some(slow) = slow {
        clients.push_str(&client("slow", &slow.url));
    }
    let d = Daemon::start_with_server(dir, &format!("socket_mode = \"0666\"\n{server}"), &clients)
        .await;
    crate::common::eventually(Duration::from_secs(10), "a first token", || async {
        let mut rpc = d.client().await;
        rpc.get_token(get("app")).await.ok()
    })
    .await;
    d
}

fn get(client: &str) -> Request<GetTokenRequest> {
    let mut req = Request::new(GetTokenRequest {
        client: client.into(),
        min_valid_seconds: 0,
    });
    req.set_timeout(Duration::from_secs(5));
    req
}

/// Runs `calls` as `uid` without blocking the runtime (the fault endpoints live on it).
async fn as_uid(uid: u32, d: &Daemon, connections: usize, calls: Vec<Calls>) -> OtherUid {
    let socket = d.socket.clone();
    tokio::task::spawn_blocking(move || {
        OtherUid::run(uid, &socket, connections, Duration::from_secs(3), &calls)
    })
    .await
    .unwrap()
}

/// Opens a stream as this process's uid and reads `tokens` tokens from it.
async fn watch_and_receive(d: &Daemon, tokens: usize) {
    let mut rpc = d.client().await;
    let mut stream = rpc
        .watch_token(WatchTokenRequest {
            client: "app".into(),
        })
        .await
        .expect("another uid still opens its stream")
        .into_inner();
    for n in 0..tokens {
        let token = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .unwrap_or_else(|_| panic!("token {n} of the stream within 10 s"))
            .unwrap()
            .expect("the stream goes on");
        assert_eq!(token.access_token, "t");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_flood_is_refused_past_the_callers_cap_and_others_still_watch() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes calls as another uid: run as root"
    );
    // Tokens of 3 s: a watcher sees a rotation about every 2 s.
    let app = FaultEndpoint::start(Reply::token("t", 3)).await;
    let d = daemon(
        &app,
        None,
        "max_watch_streams = 64\nmax_watch_streams_per_uid = 16",
    )
    .await;
    let before = d.rss_kib();

    // 400 streams over 20 connections: 16 open, every other one is refused at once.
    let flood = as_uid(NOBODY, &d, 20, vec![Calls::new("watch", "app", 400)]).await;
    let got = &flood.outcomes[0];
    assert_eq!(
        (count(got, Code::Ok), count(got, Code::ResourceExhausted)),
        (16, 384),
        "(opened, refused)"
    );
    let refused = got.iter().find(|o| o.is(Code::ResourceExhausted)).unwrap();
    assert_eq!(
        refused.message,
        "too many WatchToken streams open by uid 65534 (limit 16, server.max_watch_streams_per_uid); close some first"
    );

    // Meanwhile another uid opens its stream, gets the token and a rotation, and GetToken is
    // answered as ever.
    watch_and_receive(&d, 2).await;
    d.client().await.get_token(get("app")).await.unwrap();
    let grown = d.rss_kib().saturating_sub(before);
    assert!(grown < 16 * 1024, "daemon RSS grew by {grown} KiB");

    // Gone with the attacker's connections: its places are free again.
    flood.finish();
    crate::common::eventually(Duration::from_secs(10), "the places given back", || async {
        let again = as_uid(NOBODY, &d, 2, vec![Calls::new("watch", "app", 20)]).await;
        let opened = count(&again.outcomes[0], Code::Ok);
        again.finish();
        (opened == 16).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_costs_a_few_kib_so_the_default_cap_bounds_the_total() {
    let app = FaultEndpoint::start(Reply::token("t", 300)).await;
    let d = daemon(
        &app,
        None,
        "max_watch_streams = 4096\nmax_watch_streams_per_uid = 4096",
    )
    .await;
    let streams = 2000;
    let before = d.rss_kib();
    let mut held = Vec::new();
    for _ in 0..20 {
        let channel = d.channel().await;
        for _ in 0..streams / 20 {
            let mut rpc =
                tokend::proto::token_service_client::TokenServiceClient::new(channel.clone());
            let mut stream = rpc
                .watch_token(WatchTokenRequest {
                    client: "app".into(),
                })
                .await
                .unwrap()
                .into_inner();
            stream.message().await.unwrap().unwrap();
            held.push(stream);
        }
    }
    let per_stream = (d.rss_kib().saturating_sub(before)) as f64 / streams as f64;
    eprintln!("daemon memory per open WatchToken stream: {per_stream:.1} KiB");
    let default = tokend::config::ServerConfig::default().max_watch_streams as f64;
    assert!(
        per_stream * default < 64.0 * 1024.0,
        "{per_stream:.1} KiB per stream: the default cap of {default} would allow more than 64 MiB"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_waiting_calls_is_refused_past_the_callers_cap() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes calls as another uid: run as root"
    );
    let app = FaultEndpoint::start(Reply::token("t", 300)).await;
    // A token request that takes a minute: callers of `slow` wait.
    let slow = FaultEndpoint::start(Reply::token("late", 300).after(Duration::from_secs(60))).await;
    let d = daemon(
        &app,
        Some(&slow),
        "max_waiting_calls = 64\nmax_waiting_calls_per_uid = 8",
    )
    .await;
    let mut waiting = Calls::new("get", "slow", 100);
    waiting.timeout_ms = 30_000;
    let flood = as_uid(NOBODY, &d, 10, vec![waiting]).await;
    let got = &flood.outcomes[0];
    let still_waiting = got.iter().filter(|o| o.code.is_none()).count();
    assert_eq!(
        (still_waiting, count(got, Code::ResourceExhausted)),
        (8, 92),
        "(waiting, refused)"
    );
    let refused = got.iter().find(|o| o.is(Code::ResourceExhausted)).unwrap();
    assert!(
        refused.message.contains("calls waiting for a token")
            && refused.message.contains("uid 65534"),
        "{}",
        refused.message
    );

    // Another uid still waits (and is told why no token came), and gets what is there.
    let mut rpc = d.client().await;
    let mut req = get("slow");
    req.set_timeout(Duration::from_secs(1));
    let err = rpc.get_token(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    rpc.get_token(get("app")).await.unwrap();
    flood.finish();
}

#[tokio::test(start_paused = true)]
async fn a_deadline_of_years_waits_no_longer_than_max_wait() {
    // The first token request is still in flight when the wait ends: only the cap ends it.
    let endpoint =
        FaultEndpoint::start(Reply::token("never", 300).after(Duration::from_secs(100_000))).await;
    let h = InProcess::start(
        &endpoint.url,
        &["app"],
        "[server]\nmax_wait = \"45s\"\n[refresh]\nrequest_timeout = \"120s\"",
    )
    .await;
    let mut req = Request::new(GetTokenRequest {
        client: "app".into(),
        min_valid_seconds: 0,
    });
    // The longest grpc-timeout there is: 99,999,999 hours.
    req.metadata_mut()
        .insert("grpc-timeout", "99999999H".parse().unwrap());
    let started = tokio::time::Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(3600), h.service.get_token(req))
        .await
        .expect("answered within the hour");
    let waited = started.elapsed();
    assert_eq!(answer.unwrap_err().code(), Code::Unavailable);
    assert!(
        (Duration::from_secs(45)..=Duration::from_secs(46)).contains(&waited),
        "waited {waited:?}"
    );
}
