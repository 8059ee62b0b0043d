//! The consumer who owns a file sink's directory (or a refresh token's) plants symlinks at every
//! name tokend could write, hoping to have a root-owned file truncated, handed to them and
//! rewritten; an operator's sink in a directory others can write, or at a symlink, is refused
//! at load; metrics on a Unix socket are for whom its mode admits.

use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use tokend::proto::GetTokenRequest;

use crate::common::{Daemon, KillOnDrop, eventually, secret_file};
use crate::fault::{FaultEndpoint, Reply};

/// The attacker: the consumer's uid, no groups.
const CONSUMER: u32 = 65534;

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A directory of `owner` with `mode`.
fn dir_of(path: PathBuf, owner: u32, mode: u32) -> PathBuf {
    std::fs::create_dir(&path).unwrap();
    chown(&path, Some(owner), None).unwrap();
    chmod(&path, mode);
    path
}

/// Runs `script` in bash as the consumer.
fn as_consumer(script: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args([
        &format!("--reuid={CONSUMER}"),
        &format!("--regid={CONSUMER}"),
        "--clear-groups",
        "bash",
        "-c",
        script,
    ]);
    cmd
}

/// Content, owner, group and mode of a file that must not change.
fn fingerprint(path: &Path) -> (bool, String, u32, u32, u32) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    (
        meta.is_file(),
        std::fs::read_to_string(path).unwrap(),
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn symlinks_planted_where_tokend_writes_never_reach_a_root_file() {
    let top = tempfile::tempdir().unwrap();
    chmod(top.path(), 0o755);
    let victim = top.path().join("victim");
    std::fs::write(&victim, "root's own file\n").unwrap();
    chmod(&victim, 0o644);
    let before = fingerprint(&victim);
    let sinks = dir_of(top.path().join("consumer"), CONSUMER, 0o755);
    let state = dir_of(top.path().join("state"), CONSUMER, 0o700);
    let rt_file = state.join("web.refresh_token");
    std::fs::write(&rt_file, "rt-0\n").unwrap();
    chmod(&rt_file, 0o600);

    // Tokens that live two seconds: a sink write and a refresh-token write every 1.5 s or so.
    let sink_idp = FaultEndpoint::start(Reply::token("tok-last", 2)).await;
    sink_idp.then((0..100).map(|i| Reply::token(&format!("tok-{i}"), 2)));
    let rt_idp = FaultEndpoint::start(Reply::json(
        200,
        serde_json::json!({"access_token": "at-web", "token_type": "Bearer",
                           "expires_in": 2, "refresh_token": "rt-next"}),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "s.secret", "s3cret");
    let sink = sinks.join("good.token");
    let clients = format!(
        r#"
[refresh]
request_timeout = "2s"

[clients.good]
token_endpoint = "{}"
client_id = "good"
client_secret_file = "{{dir}}/s.secret"
[clients.good.file_sink]
path = "{}"
owner = "{CONSUMER}"
mode = "0640"

[clients.web]
token_endpoint = "{}"
client_id = "web"
client_secret_file = "{{dir}}/s.secret"
grant = "refresh_token"
refresh_token_file = "{}"
"#,
        sink_idp.url,
        sink.display(),
        rt_idp.url,
        rt_file.display()
    );
    let d = Daemon::start_in(dir, &clients).await;
    eventually(Duration::from_secs(10), "the first sink write", || async {
        std::fs::read_to_string(&sink)
            .ok()
            .filter(|t| t.starts_with("tok-"))
    })
    .await;

    // Every name a reader of the old code could guess: the temporary files (`.NAME.tmp.PID`),
    // the in-flight marker, the sink itself.
    let pid = d.pid();
    let v = victim.display();
    let plant = [
        sinks.join(format!(".good.token.tmp.{pid}")),
        sink.clone(),
        state.join(format!(".web.refresh_token.tmp.{pid}")),
        state.join("web.refresh_token.inflight"),
    ]
    .iter()
    .map(|p| format!("ln -sfn {v} {} 2>/dev/null;", p.display()))
    .collect::<String>();
    let (sink_before, rt_before) = (sink_idp.count(), rt_idp.count());
    let mut attacker = KillOnDrop(
        as_consumer(&format!(
            "end=$((SECONDS+6)); while [ $SECONDS -lt $end ]; do {plant} done"
        ))
        .stdout(Stdio::null())
        .spawn()
        .unwrap(),
    );
    let status = tokio::task::spawn_blocking(move || attacker.0.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the attack ran: {status}");
    let (sink_writes, rt_writes) = (sink_idp.count() - sink_before, rt_idp.count() - rt_before);
    assert!(
        sink_writes >= 3 && rt_writes >= 1,
        "tokens rotated during the attack: {sink_writes} sink, {rt_writes} refresh-token"
    );
    assert_eq!(
        fingerprint(&victim),
        before,
        "the root-owned file is untouched"
    );

    // The next rotation leaves a regular file of the consumer's with the current token.
    let rpc = d.client().await;
    eventually(
        Duration::from_secs(10),
        "the sink as a file with the token",
        || {
            let mut rpc = rpc.clone();
            let sink = sink.clone();
            async move {
                let current = rpc
                    .get_token(GetTokenRequest {
                        client: "good".into(),
                        min_valid_seconds: 0,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .access_token;
                let (is_file, text, uid, _, mode) = fingerprint(&sink);
                (is_file && text == format!("{current}\n") && uid == CONSUMER && mode == 0o640)
                    .then_some(())
            }
        },
    )
    .await;
    let (is_file, text, uid, _, mode) = fingerprint(&rt_file);
    assert_eq!(
        (is_file, text.as_str(), uid, mode),
        (true, "rt-next\n", 0, 0o600),
        "the refresh token, rewritten in place of nothing the consumer planted"
    );
    assert_eq!(
        fingerprint(&victim),
        before,
        "the root-owned file is untouched"
    );
    assert!(
        !d.log_text().contains("rt-next"),
        "no refresh token in the log"
    );
}

/// `tokend check` on a config whose one client has a file sink at `path` with `owner`.
fn check_sink(dir: &Path, path: &Path, owner: Option<&str>) -> (i32, String) {
    let secret = secret_file(dir, "s.secret", "x");
    let config = dir.join("tokend.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nsocket = \"{}/t.sock\"\n[clients.billing]\ntoken_endpoint = \"https://idp.example.com/token\"\nclient_id = \"b\"\nclient_secret_file = \"{}\"\n[clients.billing.file_sink]\npath = \"{}\"\n{}",
            dir.display(),
            secret.display(),
            path.display(),
            owner.map(|o| format!("owner = \"{o}\"\n")).unwrap_or_default()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tokend"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn check_refuses_sinks_others_could_plant_files_beside_and_symlinked_sinks() {
    let top = tempfile::tempdir().unwrap();
    chmod(top.path(), 0o755);
    let dir = top.path();

    // Writable by the consumer, who is not the sink's configured owner.
    let theirs = dir_of(dir.join("theirs"), CONSUMER, 0o755);
    let (code, err) = check_sink(dir, &theirs.join("t"), None);
    assert_eq!(code, 78, "{err}");
    for part in [
        "clients.billing.file_sink.path".to_string(),
        theirs.display().to_string(),
        format!("uid {CONSUMER}"),
        "0755".into(),
        "StrictModes".into(),
    ] {
        assert!(err.contains(&part), "{part:?} missing from {err}");
    }
    // ... and fine once they are its owner.
    assert_eq!(check_sink(dir, &theirs.join("t"), Some("nobody")).0, 0);

    // Writable by everyone, sticky or not.
    for mode in [0o777, 0o1777] {
        let open = dir.join(format!("open{mode:o}"));
        let open = dir_of(open, 0, mode);
        let (code, err) = check_sink(dir, &open.join("t"), Some("nobody"));
        assert_eq!(code, 78, "{err}");
        assert!(
            err.contains("writable by everyone") && err.contains(&format!("{mode:04o}")),
            "{err}"
        );
    }

    // Group-writable by a group with members other than the trusted users.
    let shared = dir_of(dir.join("shared"), 0, 0o775);
    chown(&shared, None, Some(100)).unwrap(); // users
    let (code, err) = check_sink(dir, &shared.join("t"), Some("nobody"));
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains("writable by its group") && err.contains("gid 100"),
        "{err}"
    );

    // A sink path that is a symlink, even in the owner's own directory.
    std::os::unix::fs::symlink("/etc/passwd", theirs.join("t")).unwrap();
    let (code, err) = check_sink(dir, &theirs.join("t"), Some("nobody"));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("is a symlink"), "{err}");

    // A directory reached through a symlink the consumer made (to a root-owned directory,
    // where the sink would be a file of theirs): not followed, even for the sink's owner.
    let link = theirs.join("link");
    std::os::unix::fs::symlink(dir_of(dir.join("roots"), 0, 0o755), &link).unwrap();
    std::os::unix::fs::lchown(&link, Some(CONSUMER), None).unwrap();
    let (code, err) = check_sink(dir, &link.join("t"), Some("nobody"));
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("is a symlink owned by uid 65534"), "{err}");
}

/// `curl` over the metrics socket as `uid` (root or the consumer): its exit code and output.
fn scrape_as(socket: &Path, consumer: bool) -> (i32, String) {
    let script = format!(
        "curl -sS --max-time 5 --unix-socket {} http://localhost/metrics",
        socket.display()
    );
    let out = if consumer {
        as_consumer(&script).output().unwrap()
    } else {
        Command::new("bash").args(["-c", &script]).output().unwrap()
    };
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_socket_with_mode_0600_admits_root_not_other_users() {
    let top = tempfile::tempdir().unwrap();
    chmod(top.path(), 0o755);
    let socket = top.path().join("metrics.sock");
    let idp = FaultEndpoint::start(Reply::token("tok", 3600)).await;
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "s.secret", "s3cret");
    let clients = format!(
        "[metrics]\nsocket = \"{}\"\n\n[clients.secret-project]\ntoken_endpoint = \"{}\"\nclient_id = \"c\"\nclient_secret_file = \"{{dir}}/s.secret\"\n",
        socket.display(),
        idp.url
    );
    let mut d = Daemon::start_in(dir, &clients).await;
    let meta = std::fs::metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);

    // The socket answers as soon as it is bound; the client's series follow once it starts.
    eventually(
        Duration::from_secs(10),
        "root's scrape to show the client",
        || async {
            let (code, out) = scrape_as(&socket, false);
            (code == 0 && out.contains(r#"client="secret-project""#)).then_some(())
        },
    )
    .await;

    let (code, out) = scrape_as(&socket, true);
    assert_ne!(code, 0, "another uid scraped: {out}");
    assert!(!out.contains("secret-project"), "{out}");
    assert!(
        out.contains("Permission denied") || out.contains("Couldn't connect"),
        "{out}"
    );

    assert_eq!(d.stop(), Some(0));
    assert!(!socket.exists(), "the socket file goes with the daemon");
}
