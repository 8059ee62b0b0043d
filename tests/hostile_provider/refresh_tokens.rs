//! Rotated refresh tokens are kept whenever they can be: a 2xx reply that rotates the refresh
//! token but is otherwise unusable, and a refresh token file that cannot be written, never cost
//! the grant. In-process clients against the fault endpoint over real HTTP, on tokio's paused
//! clock; `tokend authorize` as the real binary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use tokend::Config;
use tokend::proto;

use crate::common::in_process::{InProcess, load_config};
use crate::fault::{FaultEndpoint, Reply};

/// The client secret of every harness client: a space, `+`, `/`, `:` and a non-ASCII letter, so
/// that its plain, form-encoded and base64 forms all differ.
pub const SECRET: &str = "s3 cr+t/é:x";

/// One refresh-token client (Basic auth, [`SECRET`]) against the fault endpoint, with its
/// refresh token file (holding `rt-0`) in a directory of its own.
pub struct Harness {
    pub endpoint: FaultEndpoint,
    pub app: InProcess,
    pub name: String,
    pub config: Config,
    pub rt_file: PathBuf,
    pub _dir: tempfile::TempDir,
}

pub async fn start(endpoint: FaultEndpoint, name: &str, client_id: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let secret = crate::common::secret_file(dir.path(), "secret", SECRET);
    let rt_dir = dir.path().join("rt");
    std::fs::create_dir(&rt_dir).unwrap();
    let rt_file = crate::common::secret_file(&rt_dir, "refresh_token", "rt-0");
    let toml = format!(
        "[refresh]\nrequest_timeout = \"30s\"\nbackoff_min = \"1s\"\nbackoff_max = \"4s\"\n\
         [clients.{name}]\ntoken_endpoint = \"{}\"\nclient_id = \"{client_id}\"\n\
         client_secret_file = \"{}\"\ngrant = \"refresh_token\"\nrefresh_token_file = \"{}\"\n",
        endpoint.url,
        secret.display(),
        rt_file.display()
    );
    let config = load_config(dir.path(), &toml);
    let app = InProcess::from_config(&config).await;
    Harness {
        endpoint,
        app,
        name: name.to_string(),
        config,
        rt_file,
        _dir: dir,
    }
}

impl Harness {
    pub async fn get(&self) -> Result<proto::Token, tonic::Status> {
        self.app
            .get_within(&self.name, Duration::from_secs(1))
            .await
    }

    pub async fn status(&self) -> proto::ClientStatus {
        self.app.status(&self.name).await
    }

    /// The refresh token each request carried, in order.
    pub fn sent_refresh_tokens(&self) -> Vec<String> {
        self.endpoint
            .seen()
            .iter()
            .map(|s| {
                form_urlencoded::parse(s.body.as_bytes())
                    .find(|(k, _)| k == "refresh_token")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    pub fn file(&self) -> String {
        std::fs::read_to_string(&self.rt_file)
            .unwrap()
            .trim()
            .to_string()
    }

    /// Waits (on the paused clock) until the endpoint has seen `n` requests.
    pub async fn requests(&self, n: usize) {
        for _ in 0..6000 {
            if self.endpoint.count() >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "{} requests instead of {n}: {:?}",
            self.endpoint.count(),
            self.sent_refresh_tokens()
        );
    }
}

/// Polls `check` every 100 ms of the paused clock until it answers, for at most 10 minutes of
/// it (a regression then fails instead of hanging).
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..6000 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {what} within 10 minutes");
}

/// A JWS-compact token with `claims`, unsigned (tokend only reads the claims).
pub fn jwt(claims: serde_json::Value) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.sig",
        b64(br#"{"alg":"HS256","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rotated(rt: &str, token: serde_json::Value) -> Reply {
    let mut body = token;
    body["refresh_token"] = rt.into();
    Reply::json(200, body)
}

#[tokio::test(start_paused = true)]
async fn a_rotating_reply_that_is_otherwise_unusable_keeps_the_new_refresh_token() {
    let endpoint = FaultEndpoint::start(Reply::token("never", 300)).await;
    let expired = jwt(serde_json::json!({"exp": unix_now() - 3600, "scope": "a"}));
    endpoint.then([
        // The host clock is fast (or the provider's slow): the JWT has expired on arrival.
        rotated("rt-1", serde_json::json!({"access_token": expired})),
        rotated(
            "rt-2",
            serde_json::json!({"access_token": "at", "token_type": "mac", "expires_in": 60}),
        ),
        rotated("rt-3", serde_json::json!({"token_type": "Bearer"})),
        rotated(
            "rt-4",
            serde_json::json!({"access_token": "at\r\nX-Injected: 1", "expires_in": 60}),
        ),
        rotated(
            "rt-5",
            serde_json::json!({"access_token": "good", "expires_in": 600}),
        ),
    ]);
    let h = start(endpoint, "unusable", "unusable").await;
    h.requests(5).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        h.sent_refresh_tokens(),
        ["rt-0", "rt-1", "rt-2", "rt-3", "rt-4"],
        "each request sends the refresh token the previous reply rotated to"
    );
    assert_eq!(h.file(), "rt-5");
    assert_eq!(h.get().await.unwrap().access_token, "good");
}

/// `chattr +i` on `path` until dropped: neither root nor anyone else can then rename over it
/// (a file) or create, rename or remove in it (a directory). `None` where chattr cannot do it.
struct Immutable(PathBuf);

impl Immutable {
    /// Fails the test, saying what is missing, where the attribute cannot be set: without it
    /// the test would show nothing.
    fn set(path: &Path) -> Immutable {
        let ok = std::process::Command::new("chattr")
            .arg("+i")
            .arg(path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "chattr +i {} failed: this test needs chattr (Debian: e2fsprogs), root, and a \
             filesystem with the immutable attribute (ext4, xfs, btrfs; not tmpfs) for TMPDIR",
            path.display()
        );
        Immutable(path.to_path_buf())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr")
            .arg("-i")
            .arg(&self.0)
            .status();
    }
}

fn unsaved_gauge(h: &Harness, name: &str) -> bool {
    tokend::testing::metrics_exposition(&h.app.clients.store)
        .lines()
        .any(|l| l == format!("tokend_refresh_token_unsaved{{client=\"{name}\"}} 1"))
}

/// A refresh token file that cannot be written (`what` made immutable during the first
/// request) holds the rotated token in memory: sent next, never the spent one, kept across a
/// reload that builds a new token source, loud while it lasts, and on disk once writing works.
async fn unwritable(name: &str, what: fn(&Harness) -> PathBuf) {
    let endpoint = FaultEndpoint::start(Reply::token("never", 300)).await;
    endpoint.then([
        rotated(
            "rt-1",
            serde_json::json!({"access_token": "at-1", "expires_in": 60}),
        )
        .after(Duration::from_secs(5)),
        rotated(
            "rt-2",
            serde_json::json!({"access_token": "at-2", "expires_in": 60}),
        ),
        rotated(
            "rt-3",
            serde_json::json!({"access_token": "at-3", "expires_in": 60}),
        ),
    ]);
    let h = start(endpoint, name, name).await;
    h.requests(1).await;
    let lock = Immutable::set(&what(&h));
    // The reply is published although its refresh token could not be written; the condition
    // is in last_error and the metric.
    let token = until("token", || async { h.get().await.ok() }).await;
    assert_eq!(token.access_token, "at-1");
    let status = h.status().await;
    assert!(
        status.last_error.contains("refresh token is not saved"),
        "{status:?}"
    );
    assert!(unsaved_gauge(&h, name));
    assert_eq!(h.file(), "rt-0");

    // The next refresh sends the token held in memory, and the one after it too, through a
    // reload that changes the client (a new token source).
    h.requests(2).await;
    let mut new = h.config.clone();
    let mut changed = (*new.clients[name]).clone();
    std::sync::Arc::make_mut(&mut changed.oauth)
        .rare_mut()
        .audience = Some("changed".into());
    new.clients
        .insert(name.into(), std::sync::Arc::new(changed));
    let changes = tokend::testing::reconcile(
        &h.app.clients,
        &h.config,
        &new,
        &tokend::testing::http_client(),
        &mut tokend::testing::EndpointLimiters::new(4, Duration::ZERO),
    )
    .await;
    assert_eq!(changes.refetched, [name]);
    h.requests(3).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.sent_refresh_tokens(), ["rt-0", "rt-1", "rt-2"]);
    assert_eq!(h.file(), "rt-0");
    assert!(unsaved_gauge(&h, name));

    // Writable again: the retry (at most backoff_max later) saves the newest token.
    drop(lock);
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(h.file(), "rt-3");
    assert!(!unsaved_gauge(&h, name));
    let status = h.status().await;
    assert_eq!(status.last_error, "", "{status:?}");
    assert_eq!(h.get().await.unwrap().access_token, "at-3");
}

#[tokio::test(start_paused = true)]
async fn an_immutable_refresh_token_file_keeps_the_new_token_in_memory() {
    unwritable("immutable_file", |h| h.rt_file.clone()).await;
}

#[tokio::test(start_paused = true)]
async fn an_immutable_refresh_token_directory_keeps_the_new_token_in_memory() {
    // Not even the in-flight marker can be written there.
    unwritable("immutable_dir", |h| {
        h.rt_file.parent().unwrap().to_path_buf()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn authorize_keeps_the_refresh_token_of_an_otherwise_unusable_code_exchange() {
    let endpoint = FaultEndpoint::start(Reply::Drop).await;
    let expired = jwt(serde_json::json!({"exp": unix_now() - 3600}));
    endpoint.then([rotated(
        "rt-from-code",
        serde_json::json!({"access_token": expired}),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let secret = crate::common::secret_file(dir.path(), "secret", SECRET);
    let rt_file = dir.path().join("refresh_token");
    let config = dir.path().join("tokend.toml");
    std::fs::write(
        &config,
        format!(
            "[clients.web]\ntoken_endpoint = \"{}\"\nclient_id = \"web\"\nclient_secret_file = \"{}\"\n\
             grant = \"refresh_token\"\nrefresh_token_file = \"{}\"\nredirect_uri = \"http://127.0.0.1:1/cb\"\n",
            endpoint.url,
            secret.display(),
            rt_file.display()
        ),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["authorize", "web", "--code", "the-code", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&rt_file).unwrap().trim(),
        "rt-from-code"
    );
    assert!(
        stderr.contains("access token that came with it is unusable"),
        "{stderr}"
    );
}
