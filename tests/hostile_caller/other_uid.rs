//! Calls made from another uid, where the daemon must tell callers apart by the uid the kernel
//! reports: this test binary runs itself again under `setpriv --reuid=UID --regid=UID
//! --clear-groups`, as the ignored test [`calls`] with a script in its environment, makes the
//! calls over connections of its own, and prints what each call got. It keeps its calls (open
//! streams, waiting calls) until its stdin is closed, so the test can act while they are held.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokend::proto::token_service_client::TokenServiceClient;
use tokend::proto::{GetTokenRequest, RefreshTokenRequest, WatchTokenRequest};
use tonic::transport::Channel;

const SCRIPT_VAR: &str = "TOKEND_OTHER_UID_SCRIPT";
const OUTCOMES: &str = "OUTCOMES ";

/// Calls of one method, made at once.
#[derive(Clone, Serialize, Deserialize)]
pub struct Calls {
    /// "get", "watch" or "refresh".
    pub method: String,
    pub client: String,
    pub count: usize,
    /// The call's deadline (sent as grpc-timeout).
    pub timeout_ms: u64,
    /// For "refresh": the token reported as rejected.
    #[serde(default)]
    pub rejected: String,
}

impl Calls {
    pub fn new(method: &str, client: &str, count: usize) -> Calls {
        Calls {
            method: method.into(),
            client: client.into(),
            count,
            timeout_ms: 10_000,
            rejected: String::new(),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Script {
    socket: PathBuf,
    connections: usize,
    /// Calls still unanswered this long after they were made are reported as pending.
    settle_ms: u64,
    calls: Vec<Calls>,
}

/// What one call got: a gRPC code (0 for OK; for a stream, OK means it opened), or `None`
/// while it is still waiting.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Outcome {
    pub code: Option<i32>,
    pub message: String,
}

impl Outcome {
    pub fn is(&self, code: tonic::Code) -> bool {
        self.code == Some(code as i32)
    }
}

/// A process of another uid holding its calls; killed when dropped.
pub struct OtherUid {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Per entry of the script's calls, what each call got.
    pub outcomes: Vec<Vec<Outcome>>,
}

impl OtherUid {
    /// Makes `calls` as `uid` over `connections` connections to `socket` and returns once each
    /// has an answer or has waited `settle`.
    pub fn run(
        uid: u32,
        socket: &Path,
        connections: usize,
        settle: Duration,
        calls: &[Calls],
    ) -> OtherUid {
        let script = Script {
            socket: socket.to_path_buf(),
            connections,
            settle_ms: settle.as_millis() as u64,
            calls: calls.to_vec(),
        };
        let id = uid.to_string();
        let mut child = Command::new("setpriv")
            .args([
                &format!("--reuid={id}"),
                &format!("--regid={id}"),
                "--clear-groups",
            ])
            .arg(std::env::current_exe().unwrap())
            .args(["other_uid::calls", "--exact", "--ignored", "--nocapture"])
            .env(SCRIPT_VAR, serde_json::to_string(&script).unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("setpriv (util-linux) runs this test binary under another uid");
        let stdin = child.stdin.take();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let outcomes = loop {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(json) = line.strip_prefix(OUTCOMES) {
                        break serde_json::from_str(json).unwrap();
                    }
                }
                _ => panic!(
                    "the process of uid {uid} ended without reporting: {:?}",
                    child.wait()
                ),
            }
        };
        // The harness goes on writing (its summary); keep reading so it never meets a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        OtherUid {
            child,
            stdin,
            outcomes,
        }
    }

    /// Lets go of every held call and waits for the process to end.
    pub fn finish(mut self) {
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for OtherUid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many of `outcomes` got `code`.
pub fn count(outcomes: &[Outcome], code: tonic::Code) -> usize {
    outcomes.iter().filter(|o| o.is(code)).count()
}

/// The other uid's side: not a test of its own; run only by [`OtherUid::run`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run under another uid by OtherUid::run"]
async fn calls() {
    let script: Script = serde_json::from_str(
        &std::env::var(SCRIPT_VAR).expect("run by OtherUid::run, which sets the script"),
    )
    .unwrap();
    let mut channels = Vec::new();
    for _ in 0..script.connections.max(1) {
        channels.push(crate::common::unix_channel(&script.socket).await);
    }
    let settle = Duration::from_millis(script.settle_ms);
    // Answers arrive on this channel; streams that opened are kept in their task.
    let mut outcomes = Vec::new();
    let mut held = Vec::new();
    let mut n = 0;
    for spec in &script.calls {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for i in 0..spec.count {
            let channel = channels[n % channels.len()].clone();
            n += 1;
            let spec = spec.clone();
            let tx = tx.clone();
            held.push(tokio::spawn(async move {
                let outcome = one_call(channel, &spec).await;
                let _ = tx.send((i, outcome.0));
                // Held (an open stream) until the process ends.
                let _stream = outcome.1;
                std::future::pending::<()>().await;
            }));
        }
        drop(tx);
        let mut got = vec![
            Outcome {
                code: None,
                message: String::new()
            };
            spec.count
        ];
        let deadline = tokio::time::Instant::now() + settle;
        for _ in 0..spec.count {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((i, outcome))) => got[i] = outcome,
                _ => break,
            }
        }
        outcomes.push(got);
    }
    println!("{OUTCOMES}{}", serde_json::to_string(&outcomes).unwrap());
    tokio::task::spawn_blocking(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
    })
    .await
    .unwrap();
}

type Held = Option<tonic::Streaming<tokend::proto::Token>>;

async fn one_call(channel: Channel, spec: &Calls) -> (Outcome, Held) {
    let mut rpc = TokenServiceClient::new(channel);
    let timeout = Duration::from_millis(spec.timeout_ms);
    let status = match spec.method.as_str() {
        "get" => {
            let mut req = tonic::Request::new(GetTokenRequest {
                client: spec.client.clone(),
                min_valid_seconds: 0,
            });
            req.set_timeout(timeout);
            rpc.get_token(req).await.map(drop)
        }
        "refresh" => {
            let mut req = tonic::Request::new(RefreshTokenRequest {
                client: spec.client.clone(),
                rejected_access_token: spec.rejected.clone(),
            });
            req.set_timeout(timeout);
            rpc.refresh_token(req).await.map(drop)
        }
        "watch" => {
            let req = tonic::Request::new(WatchTokenRequest {
                client: spec.client.clone(),
            });
            match rpc.watch_token(req).await {
                Ok(stream) => {
                    let ok = Outcome {
                        code: Some(0),
                        message: String::new(),
                    };
                    return (ok, Some(stream.into_inner()));
                }
                Err(e) => Err(e),
            }
        }
        other => panic!("unknown method {other}"),
    };
    let outcome = match status {
        Ok(()) => Outcome {
            code: Some(0),
            message: String::new(),
        },
        Err(e) => Outcome {
            code: Some(e.code() as i32),
            message: e.message().to_string(),
        },
    };
    (outcome, None)
}
