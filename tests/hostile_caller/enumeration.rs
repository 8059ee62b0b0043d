//! Enumeration: a local user probes client names to learn which exist. A client it may not
//! read answers exactly as a name nobody configured (NOT_FOUND, the same message) on GetToken,
//! WatchToken and RefreshToken; the daemon still logs the denial, and the allowed caller keeps
//! getting its token.

use std::time::Duration;

use tokend::proto::GetTokenRequest;
use tonic::Code;

use crate::common::{Daemon, secret_file};
use crate::fault::{FaultEndpoint, Reply};
use crate::other_uid::{Calls, OtherUid};

#[tokio::test(flavor = "multi_thread")]
async fn a_client_the_caller_may_not_read_looks_like_no_client_at_all() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test makes calls as another uid: run as root"
    );
    let endpoint = FaultEndpoint::start(Reply::token("t", 300)).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    secret_file(dir.path(), "secret", "s3cret");
    let client = |name: &str, access: &str| {
        format!(
            "[clients.{name}]\ntoken_endpoint = \"{}\"\nclient_id = \"{name}\"\n\
             client_secret_file = \"{{dir}}/secret\"\n{access}\n",
            endpoint.url
        )
    };
    let d = Daemon::start_with_server(
        dir,
        "socket_mode = \"0666\"",
        &[
            client("private", "allowed_users = [\"0\"]"),
            client("open", ""),
        ]
        .concat(),
    )
    .await;
    // The allowed caller (root) gets the token.
    let mut req = tonic::Request::new(GetTokenRequest {
        client: "private".into(),
        min_valid_seconds: 0,
    });
    req.set_timeout(Duration::from_secs(10));
    d.client().await.get_token(req).await.unwrap();

    // "privat3": a name nobody configured, as long as the hidden one.
    let probe = |client: &str| {
        let mut refresh = Calls::new("refresh", client, 1);
        refresh.rejected = "t".into();
        vec![
            Calls::new("get", client, 1),
            Calls::new("watch", client, 1),
            refresh,
        ]
    };
    let calls: Vec<Calls> = ["private", "privat3", "open"]
        .into_iter()
        .flat_map(probe)
        .collect();
    let socket = d.socket.clone();
    let nobody = tokio::task::spawn_blocking(move || {
        OtherUid::run(65534, &socket, 1, Duration::from_secs(5), &calls)
    })
    .await
    .unwrap();
    let answers = &nobody.outcomes;
    for (method, n) in [("GetToken", 0), ("WatchToken", 1), ("RefreshToken", 2)] {
        let hidden = &answers[n][0];
        let unknown = &answers[3 + n][0];
        assert!(hidden.is(Code::NotFound), "{method}: {hidden:?}");
        assert_eq!(
            hidden.message, "no client named \"private\" is configured",
            "{method}"
        );
        assert_eq!(
            hidden.message.replace("private", "privat3"),
            unknown.message,
            "{method}: the hidden client answers as the unknown name"
        );
        assert_eq!(hidden.code, unknown.code, "{method}");
        assert!(
            answers[6 + n][0].is(Code::Ok),
            "{method} of the open client"
        );
    }
    nobody.finish();

    // The daemon knows what happened, even if the caller may not.
    let log = d.log_text();
    let denials = log
        .lines()
        .filter(|l| {
            l.contains("WARN")
                && l.contains("denied")
                && l.contains("client=private")
                && l.contains("uid 65534")
        })
        .count();
    assert_eq!(denials, 3, "{log}");
}
