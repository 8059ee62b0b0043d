//! The token lifecycle on tokio's paused clock: first fetch, proactive refresh, backoff,
//! operator errors, caller-triggered refreshes and actor restarts, driven by a scripted token
//! source and observed through the gRPC service as callers see it.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::in_process::InProcess;
use futures::future::join_all;
use tokend::proto::{self, RefreshTokenRequest};
use tokend::testing::AccessToken;
use tokend::testing::ClientSpec;
use tokend::testing::Grant;
use tokend::testing::RefreshPolicy;
use tokend::testing::SlotSettings;
use tokend::testing::TokenService;
use tokend::testing::reply::{LifetimeSource, OAuthError};
use tokend::testing::{FetchError, TokenReply, TokenSource};
use tokio::time::Instant;
use tonic::{Code, Request};

/// One scripted reply: how long the request takes, then its outcome.
enum Step {
    Token {
        lifetime: Duration,
        after: Duration,
    },
    Fail {
        error: fn() -> FetchError,
        after: Duration,
    },
}

/// A token source that plays a script and records when each request started. Past the end of
/// the script it issues 300 s tokens at once.
#[derive(Clone, Default)]
struct Scripted {
    steps: Arc<Mutex<VecDeque<Step>>>,
    started: Arc<Mutex<Vec<Instant>>>,
    issued: Arc<Mutex<u32>>,
    /// Whether the credentials come from a command (as `subject_token_command`).
    from_commands: bool,
}

impl Scripted {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        let s = Self::default();
        s.steps.lock().unwrap().extend(steps);
        s
    }

    fn requests(&self) -> usize {
        self.started.lock().unwrap().len()
    }

    /// Request start times, in seconds since `t0`.
    fn times(&self, t0: Instant) -> Vec<f64> {
        self.started
            .lock()
            .unwrap()
            .iter()
            .map(|t| (*t - t0).as_secs_f64())
            .collect()
    }
}

impl TokenSource for Scripted {
    fn credentials_from_commands(&self) -> bool {
        self.from_commands
    }

    fn fetch(
        self: Arc<Self>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<TokenReply, FetchError>> + Send>>
    {
        self.started.lock().unwrap().push(Instant::now());
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Step::Token {
                lifetime: Duration::from_secs(300),
                after: Duration::ZERO,
            });
        let issued = self.issued.clone();
        Box::pin(async move {
            match step {
                Step::Token { lifetime, after } => {
                    tokio::time::sleep(after).await;
                    let n = {
                        let mut n = issued.lock().unwrap();
                        *n += 1;
                        *n
                    };
                    Ok(TokenReply {
                        access_token: AccessToken::new(format!("token-{n}")),
                        token_type: tokend::testing::TokenType::Bearer,
                        scopes: vec!["a".into(), "b".into()],
                        lifetime,
                        lifetime_source: LifetimeSource::ExpiresIn,
                        dpop_key: None,
                    })
                }
                Step::Fail { error, after } => {
                    tokio::time::sleep(after).await;
                    Err(error())
                }
            }
        })
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn token(lifetime: u64) -> Step {
    Step::Token {
        lifetime: secs(lifetime),
        after: Duration::ZERO,
    }
}

fn fail(error: fn() -> FetchError) -> Step {
    Step::Fail {
        error,
        after: Duration::ZERO,
    }
}

fn server_error() -> FetchError {
    FetchError::Status {
        status: 503,
        retry_after: None,
    }
}

fn invalid_client() -> FetchError {
    FetchError::OAuth {
        status: 401,
        error: OAuthError {
            error: "invalid_client".into(),
            description: None,
        },
        retry_after: None,
    }
}

async fn start(source: &Scripted) -> InProcess {
    start_with(source, RefreshPolicy::default()).await
}

async fn start_with(source: &Scripted, policy: RefreshPolicy) -> InProcess {
    InProcess::from_specs(
        vec![ClientSpec {
            name: "app".into(),
            settings: SlotSettings {
                grant: Grant::ClientCredentials,
                authorize_command: None,
                access: Default::default(),
                required: true,
                min_interval: policy.min_interval,
            },
            source: Arc::new(source.clone()),
            sink: None,
        }],
        &policy,
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn first_call_waits_for_the_first_fetch() {
    let source = Scripted::new([Step::Token {
        lifetime: secs(300),
        after: secs(5),
    }]);
    let h = start(&source).await;
    let t = h.get("app", 0).await.unwrap();
    assert_eq!(t.access_token, "token-1");
    assert_eq!(t.scopes, ["a", "b"]);
    assert_eq!(
        h.elapsed().round(),
        5.0,
        "answered when the fetch completed"
    );
    assert_eq!(source.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn refreshes_between_70_and_80_percent_of_lifetime_once_per_token() {
    let source = Scripted::new([]);
    let h = start(&source).await;
    h.get("app", 0).await.unwrap();
    tokio::time::sleep(secs(1000)).await;
    let times = source.times(h.t0);
    // 300 s tokens: each refresh 210-240 s after the previous token arrived, so 4-5 requests
    // in 1000 s; never a burst.
    assert!((4..=5).contains(&times.len()), "{times:?}");
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!((210.0..=240.0).contains(&gap), "gap {gap} in {times:?}");
    }
    // Every caller in between got a valid token without causing a request.
    let t = h.get("app", 0).await.unwrap();
    assert_eq!(t.access_token, format!("token-{}", times.len()));
}

#[tokio::test(start_paused = true)]
async fn transient_failures_back_off_exponentially_with_jitter() {
    let source = Scripted::new([
        fail(server_error),
        fail(server_error),
        fail(server_error),
        fail(server_error),
        token(300),
    ]);
    let h = start(&source).await;
    let t = h.get("app", 0).await.unwrap();
    assert_eq!(t.access_token, "token-1");
    let times = source.times(h.t0);
    let gaps: Vec<f64> = times.windows(2).map(|p| p[1] - p[0]).collect();
    // Nominal 1, 2, 4, 8 s, each drawn uniformly between backoff_min (1 s) and the nominal.
    let bounds = [(1.0, 1.0), (1.0, 2.0), (1.0, 4.0), (1.0, 8.0)];
    assert_eq!(gaps.len(), 4, "{times:?}");
    for (gap, (lo, hi)) in gaps.iter().zip(bounds) {
        assert!(
            (lo..=hi).contains(gap),
            "gap {gap} not in [{lo}, {hi}]: {times:?}"
        );
    }
    let s = h.status("app").await;
    assert_eq!(s.consecutive_failures, 0);
    assert_eq!(s.state, proto::ClientState::Fresh as i32);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let source = Scripted::new([
        fail(|| FetchError::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(120)),
        }),
        token(300),
    ]);
    let h = start(&source).await;
    // The caller's budget (30 s) ends before the retry (120 s): it is told so at once.
    let err = h.get("app", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("429"), "{}", err.message());
    assert!(
        err.message().contains("next attempt at"),
        "{}",
        err.message()
    );
    assert!(
        h.elapsed() < 1.0,
        "did not wait for a retry beyond its budget"
    );
    tokio::time::sleep(secs(130)).await;
    let times = source.times(h.t0);
    assert_eq!(times.len(), 2);
    assert!(times[1] >= 120.0, "{times:?}");
}

#[tokio::test(start_paused = true)]
async fn operator_errors_retry_slowly_and_answer_failed_precondition() {
    let source = Scripted::new([fail(invalid_client), fail(invalid_client), token(300)]);
    let h = start(&source).await;
    let err = h.get("app", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("invalid_client"),
        "{}",
        err.message()
    );
    let s = h.status("app").await;
    assert_eq!(s.state, proto::ClientState::NeedsOperator as i32);
    assert_eq!(s.consecutive_failures, 1);
    assert!(s.next_refresh_at.is_some());
    tokio::time::sleep(secs(299)).await;
    assert_eq!(source.requests(), 1, "no fast retry loop");
    tokio::time::sleep(secs(302)).await;
    assert_eq!(source.times(h.t0), [0.0, 300.0, 600.0]);
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "token-1");
}

#[tokio::test(start_paused = true)]
async fn refused_credentials_from_a_command_are_retried_on_the_backoff_schedule() {
    // A command's next token shows only by running it: the client retries (and the source
    // runs it) at 1, 2, 4, 8 s nominal, not every 300 s, and is "needs operator" meanwhile.
    let source = Scripted {
        from_commands: true,
        ..Scripted::new([
            fail(invalid_client),
            fail(invalid_client),
            fail(invalid_client),
            fail(invalid_client),
            token(300),
        ])
    };
    let h = start(&source).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let s = h.status("app").await;
    assert_eq!(s.state, proto::ClientState::NeedsOperator as i32);
    tokio::time::sleep(secs(30)).await;
    let times = source.times(h.t0);
    let gaps: Vec<f64> = times.windows(2).map(|p| p[1] - p[0]).collect();
    assert_eq!(gaps.len(), 4, "{times:?}");
    for (gap, hi) in gaps.iter().zip([1.0, 2.0, 4.0, 8.0]) {
        assert!(
            (1.0..=hi).contains(gap),
            "gap {gap} not in [1, {hi}]: {times:?}"
        );
    }
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "token-1");
}

#[tokio::test(start_paused = true)]
async fn expired_token_is_never_handed_out() {
    let mut steps = vec![token(20)];
    steps.extend((0..50).map(|_| fail(server_error)));
    let source = Scripted::new(steps);
    let h = start(&source).await;
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "token-1");
    // Refresh at 15 s fails; the token stays valid (and served) until 20 s.
    tokio::time::sleep(secs(19)).await;
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "token-1");
    assert_eq!(
        h.status("app").await.state,
        proto::ClientState::BackingOff as i32
    );
    tokio::time::sleep(secs(2)).await;
    let err = h.get("app", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("503"), "{}", err.message());
    assert!(!h.status("app").await.has_valid_token);
}

#[tokio::test(start_paused = true)]
async fn min_valid_triggers_one_refresh_and_is_met() {
    let source = Scripted::new([]);
    let h = start(&source).await;
    h.get("app", 0).await.unwrap();
    tokio::time::sleep(secs(100)).await;
    // 200 s left; asking for 250 s forces a refresh; concurrent askers share it.
    let calls = (0..20).map(|_| h.get("app", 250));
    let results = join_all(calls).await;
    for r in results {
        assert_eq!(r.unwrap().access_token, "token-2");
    }
    assert_eq!(source.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn unreachable_min_valid_is_out_of_range_not_a_hang() {
    let source = Scripted::new([token(60), token(60)]);
    let h = start(&source).await;
    h.get("app", 0).await.unwrap();
    let err = h.get("app", 120).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(err.message().contains("60s"), "{}", err.message());
    // Answered from the current token's lifetime, without a request that could not help.
    assert_eq!(source.requests(), 1);
}

#[tokio::test(start_paused = true)]
async fn reports_of_a_rejected_token_coalesce_into_one_request() {
    let source = Scripted::new([
        token(300),
        Step::Token {
            lifetime: secs(300),
            after: secs(2),
        },
    ]);
    let h = start(&source).await;
    let first = h.get("app", 0).await.unwrap().access_token;
    let report = |rejected: String| {
        h.service.refresh_token(Request::new(RefreshTokenRequest {
            client: "app".into(),
            rejected_access_token: rejected,
        }))
    };
    let results = join_all((0..50).map(|_| report(first.clone()))).await;
    for r in results {
        assert_eq!(r.unwrap().into_inner().to_proto().access_token, "token-2");
    }
    assert_eq!(source.requests(), 2);
    // A late report of the old token is answered with the current one, no request.
    let late = report(first).await.unwrap().into_inner().to_proto();
    assert_eq!(late.access_token, "token-2");
    assert_eq!(source.requests(), 2);
}

#[tokio::test(start_paused = true)]
async fn bad_requests_get_the_right_status() {
    let source = Scripted::new([]);
    let h = start(&source).await;
    assert_eq!(h.get("nope", 0).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(
        h.get("", 0).await.unwrap_err().code(),
        Code::InvalidArgument
    );
    let empty = h
        .service
        .refresh_token(Request::new(RefreshTokenRequest {
            client: "app".into(),
            rejected_access_token: String::new(),
        }))
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
}

/// The client's actors, as the supervisor sees them.
fn actors(h: &InProcess) -> Vec<ractor::ActorCell> {
    h.clients.supervisor().get_cell().get_children()
}

#[tokio::test(start_paused = true)]
async fn a_client_sleeps_between_refreshes_and_a_crash_mid_refresh_keeps_its_token() {
    let slow = Step::Token {
        lifetime: secs(300),
        after: secs(30),
    };
    let source = Scripted::new([token(300), slow]);
    let h = start(&source).await;
    let first = h.get("app", 0).await.unwrap().access_token;
    tokio::time::sleep(secs(1)).await;
    assert!(actors(&h).is_empty(), "no actor while nothing is due");
    // The alarm wakes it in 70-80% of the lifetime; this refresh takes 30 s.
    for _ in 0..300 {
        if source.requests() == 2 {
            break;
        }
        tokio::time::sleep(secs(1)).await;
    }
    let times = source.times(h.t0);
    assert_eq!(times.len(), 2, "{times:?}");
    assert!((210.0..=240.0).contains(&times[1]), "{times:?}");
    let running = actors(&h);
    assert_eq!(running.len(), 1, "running while its refresh is in flight");
    running[0].kill();
    // The last good token is served meanwhile.
    assert_eq!(h.get("app", 0).await.unwrap().access_token, first);
    tokio::time::sleep(secs(5)).await;
    // Restarted, it asked again, published, and went back to sleep.
    assert_eq!(source.requests(), 3);
    assert_ne!(h.get("app", 0).await.unwrap().access_token, first);
    assert_eq!(
        h.status("app").await.state,
        proto::ClientState::Fresh as i32
    );
    assert!(actors(&h).is_empty());
}

#[tokio::test(start_paused = true)]
async fn exhausted_restart_budget_is_visible() {
    let slow = || Step::Token {
        lifetime: secs(300),
        after: secs(1000),
    };
    let source = Scripted::new([token(300)].into_iter().chain((0..10).map(|_| slow())));
    let h = start(&source).await;
    h.get("app", 0).await.unwrap();
    // The refresh is in flight (and takes long): the actor runs.
    tokio::time::sleep(secs(241)).await;
    for _ in 0..=tokend::testing::MAX_RESTARTS {
        let running = actors(&h);
        assert_eq!(running.len(), 1);
        running[0].kill();
        tokio::time::sleep(secs(1)).await;
    }
    assert!(actors(&h).is_empty());
    let s = h.status("app").await;
    assert_eq!(s.state, proto::ClientState::Failed as i32);
    assert!(s.last_error.contains("restart budget"), "{}", s.last_error);
    // The last good token is still served until it expires.
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "token-1");
}
