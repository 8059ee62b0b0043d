//! The token lifecycle under faults, against a fault-injecting token endpoint over real HTTP on
//! 127.0.0.1, on tokio's paused clock: odd replies, 429/503 with Retry-After, operator errors,
//! an outage, herds of callers, the per-endpoint budget, and monotonic scheduling. Each test
//! asserts what callers got, what the endpoint saw, and when.

mod common;
mod fault;

use std::cell::RefCell;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use common::in_process::InProcess;
use fault::{FaultEndpoint, Reply};
use futures::FutureExt;
use futures::future::join_all;
use tokend::proto::{self, RefreshTokenRequest};
use tokend::testing::TokenService;
use tokio::time::Instant;
use tonic::{Code, Request};

/// Starts `clients` (all on the fault endpoint) with extra `[refresh]` settings.
async fn start(endpoint: &FaultEndpoint, clients: &[&str], refresh: &str) -> InProcess {
    route_logs();
    InProcess::start(
        &endpoint.url,
        clients,
        &format!("[refresh]\nrequest_timeout = \"5s\"\n{refresh}"),
    )
    .await
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn state(s: proto::ClientState) -> i32 {
    s as i32
}

#[tokio::test(start_paused = true)]
async fn odd_replies_are_clear_per_client_errors_and_the_client_recovers() {
    let endpoint = FaultEndpoint::start(Reply::token("good", 300)).await;
    let stall =
        serde_json::json!({"access_token": "never-complete", "expires_in": 300}).to_string();
    let cases: Vec<(Reply, &str)> = vec![
        (
            Reply::raw(200, "text/html", b"<html>maintenance</html>"),
            "not JSON",
        ),
        (Reply::raw(200, "application/json", b""), "not JSON"),
        (
            Reply::json(200, serde_json::json!({"token_type": "Bearer"})),
            "no access_token",
        ),
        (
            Reply::json(
                200,
                serde_json::json!({"access_token": "t", "token_type": "mac"}),
            ),
            "token_type \"mac\" is not supported",
        ),
        (
            Reply::Huge {
                size: 8 * 1024 * 1024,
            },
            "larger than",
        ),
        (
            Reply::Stall {
                body: stall.into_bytes(),
            },
            "timed out after 5s",
        ),
        (Reply::Drop, "token request failed"),
        (
            Reply::raw(502, "text/html", b"<html>bad gateway</html>"),
            "HTTP 502",
        ),
    ];
    let expected: Vec<&str> = cases.iter().map(|(_, e)| *e).collect();
    endpoint.then(cases.into_iter().map(|(r, _)| r));
    let h = start(
        &endpoint,
        &["app"],
        "backoff_min = \"1s\"\nbackoff_max = \"2s\"",
    )
    .await;
    let mut errors = Vec::new();
    // Observe each failure as callers see it, until the client recovers.
    let mut rx_errors = 0;
    while rx_errors < expected.len() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = h.status("app").await;
        if s.consecutive_failures as usize > rx_errors {
            rx_errors = s.consecutive_failures as usize;
            errors.push(s.last_error.clone());
            assert_eq!(
                s.state,
                state(proto::ClientState::BackingOff),
                "{}",
                s.last_error
            );
        }
        assert!(h.t0.elapsed() < secs(120), "stuck after {errors:?}");
    }
    for (error, want) in errors.iter().zip(&expected) {
        assert!(error.contains(want), "{error:?} should mention {want:?}");
        assert!(
            !error.contains("maintenance") && !error.contains("never-complete"),
            "reply body echoed: {error}"
        );
    }
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "good");
    assert_eq!(endpoint.count(), expected.len() + 1);
}

#[tokio::test(start_paused = true)]
async fn odd_lifetimes_are_clamped_as_documented() {
    let endpoint = FaultEndpoint::start(Reply::token("later", 300)).await;
    let reply = |expires_in: serde_json::Value| {
        Reply::json(
            200,
            serde_json::json!({"access_token": "t", "expires_in": expires_in}),
        )
    };
    // One client per shape, so each keeps its first token: expires_in missing, 0, -5, "120",
    // 1e12, and 2 s (shorter than the refresh margin).
    endpoint.then([
        Reply::json(200, serde_json::json!({"access_token": "t"})),
        reply(serde_json::json!(0)),
        reply(serde_json::json!(-5)),
        reply(serde_json::json!("120")),
        reply(serde_json::json!(1e12)),
        reply(serde_json::json!(2)),
    ]);
    let names = [
        "a_missing",
        "b_zero",
        "c_negative",
        "d_string",
        "e_huge",
        "f_short",
    ];
    // endpoint_spacing makes the order of first requests the order of the client names.
    let h = start(
        &endpoint,
        &names,
        "default_lifetime = \"7m\"\nendpoint_concurrency = 1",
    )
    .await;
    let mut lifetimes = Vec::new();
    for name in names {
        let t = h.get(name, 0).await.unwrap();
        let expires = t.expires_at.unwrap().seconds - t.issued_at.unwrap().seconds;
        lifetimes.push(expires);
    }
    assert_eq!(lifetimes, [420, 420, 420, 120, 86_400, 2]);
    // The 2 s token is refreshed before it expires (at 1.5 s), not after.
    let first = endpoint.times_since(h.t0)[5];
    tokio::time::sleep(secs(3)).await;
    let refresh = endpoint.times_since(h.t0)[6];
    assert!(
        (1.4..=1.6).contains(&(refresh - first)),
        "{:?}",
        endpoint.times_since(h.t0)
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_on_429_and_503_is_never_undercut() {
    let endpoint = FaultEndpoint::start(Reply::token("ok", 300)).await;
    let date = httpdate_in(secs(20));
    endpoint.then([
        Reply::json(429, serde_json::json!({"error": "slow_down"})).header("Retry-After", "7"),
        Reply::raw(503, "text/plain", b"busy").header("Retry-After", &date),
    ]);
    let h = start(&endpoint, &["app"], "").await;
    tokio::time::sleep(secs(40)).await;
    let t = endpoint.times_since(h.t0);
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(t[1] - t[0] >= 7.0, "429 Retry-After 7 s honoured: {t:?}");
    // The HTTP date was 20 s after the test started, in whole seconds (up to 1 s earlier). The
    // paused clock stops tokio's time, not the wall clock the date is read against: real time
    // passes before the 503 arrives (over a second on a loaded machine), and the delay asked for
    // is that much shorter. Ignoring the date would retry after the backoff, a few seconds.
    assert!(t[2] - t[1] >= 17.0, "503 Retry-After date honoured: {t:?}");
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "ok");
}

/// An IMF-fixdate `d` from now.
fn httpdate_in(d: Duration) -> String {
    let t = std::time::SystemTime::now() + d;
    let secs = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), enough for a test.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[tokio::test(start_paused = true)]
async fn operator_errors_stop_the_fast_retry_loop() {
    let endpoint = FaultEndpoint::start(Reply::json(
        401,
        serde_json::json!({"error": "invalid_client", "error_description": "unknown client"}),
    ))
    .await;
    let (log, _guard) = LogCapture::install();
    let h = start(&endpoint, &["app"], "operator_retry = \"10m\"").await;
    let err = h.get("app", 0).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(
        err.message().contains("invalid_client: unknown client"),
        "{}",
        err.message()
    );
    let s = h.status("app").await;
    assert_eq!(s.state, state(proto::ClientState::NeedsOperator));
    tokio::time::sleep(secs(3500)).await;
    // One attempt at start, then one every 10 minutes: 6 in 3500 s, not thousands.
    assert_eq!(endpoint.count(), 6, "{:?}", endpoint.times_since(h.t0));
    // Logged once at error level, not at every attempt.
    let text = log.text();
    assert_eq!(text.matches("operator action needed").count(), 1, "{text}");
    assert_eq!(text.matches("ERROR").count(), 1, "{text}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_request_is_logged_with_its_reason_once() {
    let endpoint = FaultEndpoint::start(Reply::token("ok", 300)).await;
    endpoint.then([Reply::Drop]);
    let (log, _guard) = LogCapture::install();
    let h = start(
        &endpoint,
        &["app"],
        "backoff_min = \"1s\"\nbackoff_max = \"1s\"",
    )
    .await;
    tokio::time::sleep(secs(5)).await;
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "ok");
    let text = log.text();
    let warning = text
        .lines()
        .find(|l| l.contains("WARN") && l.contains("client=app"))
        .unwrap_or_else(|| panic!("the failure is logged: {text}"));
    assert_eq!(
        warning.matches("token request failed").count(),
        1,
        "{warning}"
    );
}

/// Log output of the current thread (the paused-clock runtime runs every task there).
///
/// Why one process-wide subscriber and not `tracing::subscriber::set_default` per test:
/// tracing caches each call site's interest process-wide, and a site first reached by another
/// test's thread while this thread's subscriber was being registered can stay cached as
/// "never", so this test's events vanish (seen once in CI). The global subscriber is in place
/// before any test reaches the daemon's code (`route_logs` in `start`), and its writer hands
/// each event to the buffer of the thread that logged it, if that thread is capturing.
#[derive(Clone, Default)]
struct LogCapture(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURING: RefCell<Option<LogCapture>> = const { RefCell::new(None) };
}

/// Installs the process-wide subscriber, once; every test calls this before starting tokend.
fn route_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        tracing::subscriber::set_global_default(
            tracing_subscriber::fmt()
                .with_writer(|| ThreadWriter)
                .with_ansi(false)
                .finish(),
        )
        .expect("nothing else in this test binary installs a subscriber");
    });
}

/// Stops this thread's capture when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.with(|c| c.borrow_mut().take());
    }
}

impl LogCapture {
    /// Captures this thread's log output until the guard is dropped.
    fn install() -> (LogCapture, Capturing) {
        route_logs();
        let log = LogCapture::default();
        CAPTURING.with(|c| *c.borrow_mut() = Some(log.clone()));
        (log, Capturing)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Appends to the current thread's capture; output of threads not capturing is dropped.
struct ThreadWriter;

impl std::io::Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|c| {
            if let Some(log) = c.borrow().as_ref() {
                log.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn outage_serves_the_valid_token_then_unavailable_then_recovers_promptly() {
    // 60 s tokens; the endpoint fails from the first refresh on, for 300 s (five lifetimes).
    let endpoint = FaultEndpoint::start(Reply::raw(500, "text/plain", b"down")).await;
    endpoint.then([Reply::token("before", 60)]);
    let h = start(
        &endpoint,
        &["app"],
        "backoff_min = \"1s\"\nbackoff_max = \"30s\"",
    )
    .await;
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "before");

    // Until it expires at 60 s, callers keep getting the valid token.
    tokio::time::sleep(secs(59)).await;
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "before");
    assert!(
        endpoint.count() >= 2,
        "refresh attempts began before expiry"
    );

    // After expiry: UNAVAILABLE with the reason and the next attempt.
    tokio::time::sleep(secs(2)).await;
    let err = h.get_within("app", secs(1)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("HTTP 500") && err.message().contains("next attempt at"),
        "{}",
        err.message()
    );

    // Back at 300 s.
    tokio::time::sleep_until(h.t0 + secs(300)).await;
    let during = endpoint.count();
    endpoint.otherwise(Reply::token("after", 60));
    let t = h.get_within("app", secs(40)).await.unwrap();
    let recovered = h.t0.elapsed().as_secs_f64();
    assert_eq!(t.access_token, "after");
    assert!(
        recovered <= 300.0 + 30.0,
        "fresh token within one backoff ceiling: {recovered}"
    );

    // Requests during the outage follow the backoff schedule: the first failure at the
    // refresh (42-45 s into the 60 s token), then the n-th retry between backoff_min (1 s) and
    // its nominal delay, which doubles from 1 s to the 30 s ceiling.
    let times = endpoint.times_since(h.t0);
    let failures = &times[1..during];
    assert!((42.0..=45.01).contains(&failures[0]), "{times:?}");
    for (n, pair) in failures.windows(2).enumerate() {
        let nominal = 2f64.powi(n as i32).min(30.0);
        let gap = pair[1] - pair[0];
        assert!(
            (1.0..=nominal + 0.01).contains(&gap),
            "retry {} after {gap:.2}s: {times:?}",
            n + 1
        );
    }
    assert!(
        300.0 - failures.last().unwrap() <= 30.01,
        "kept retrying to the end: {times:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_thousand_cold_callers_cause_one_token_request() {
    let endpoint = FaultEndpoint::start(Reply::token("t", 300).after(secs(2))).await;
    let h = start(&endpoint, &["app"], "").await;
    let calls = (0..1000).map(|_| h.get("app", 0));
    let results = join_all(calls).await;
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().unwrap().access_token == "t")
    );
    assert_eq!(endpoint.count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_reports_of_one_rejected_token_cause_one_request() {
    let endpoint = FaultEndpoint::start(Reply::token("second", 300).after(secs(1))).await;
    endpoint.then([Reply::token("first", 300)]);
    let h = start(&endpoint, &["app"], "").await;
    assert_eq!(h.get("app", 0).await.unwrap().access_token, "first");
    let reports = (0..100).map(|_| {
        h.service.refresh_token(Request::new(RefreshTokenRequest {
            client: "app".into(),
            rejected_access_token: "first".into(),
        }))
    });
    let results = join_all(reports).await;
    assert!(
        results
            .into_iter()
            .all(|r| r.unwrap().into_inner().to_proto().access_token == "second")
    );
    assert_eq!(endpoint.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn clients_sharing_an_endpoint_share_its_budget() {
    let endpoint =
        FaultEndpoint::start(Reply::token("t", 300).after(Duration::from_millis(500))).await;
    let names: Vec<String> = (0..20).map(|i| format!("c{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let h = start(
        &endpoint,
        &refs,
        "endpoint_concurrency = 3\nendpoint_spacing = \"50ms\"",
    )
    .await;
    for name in &refs {
        h.get(name, 0).await.unwrap();
    }
    let seen = endpoint.seen();
    assert_eq!(seen.len(), 20);
    assert!(seen.iter().all(|s| s.concurrent <= 3), "cap of 3 respected");
    assert_eq!(seen.iter().map(|s| s.concurrent).max(), Some(3), "and used");
    let mut starts: Vec<Instant> = seen.iter().map(|s| s.at).collect();
    starts.sort();
    for pair in starts.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(50),
            "spacing kept"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn clients_waiting_for_their_endpoint_wait_without_an_actor() {
    let endpoint =
        FaultEndpoint::start(Reply::token("t", 300).after(Duration::from_millis(500))).await;
    let names: Vec<String> = (0..40).map(|i| format!("c{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let h = start(&endpoint, &refs, "endpoint_concurrency = 2").await;
    let limit = tokend::testing::starts_per_endpoint(2);
    let mut most = 0;
    // 40 requests, two at a time, half a second each: ten seconds.
    for _ in 0..200 {
        let running = h.clients.supervisor().get_cell().get_children().len();
        most = most.max(running);
        if endpoint.count() == 40 && running == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        most, limit,
        "at most {limit} actors at once, and that many used"
    );
    assert_eq!(endpoint.count(), 40);
    for name in &refs {
        assert_eq!(h.status(name).await.state, state(proto::ClientState::Fresh));
    }
    assert!(
        h.clients.supervisor().get_cell().get_children().is_empty(),
        "all asleep"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reload_that_moves_a_waiting_client_to_another_endpoint_keeps_both_turns() {
    route_logs();
    let reply = || Reply::token("t", 300).after(secs(1));
    let (x, y) = (
        FaultEndpoint::start(reply()).await,
        FaultEndpoint::start(reply()).await,
    );
    let names: Vec<String> = ["x", "y"]
        .iter()
        .flat_map(|e| (0..6).map(move |i| format!("{e}{i}")))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let secret = common::secret_file(dir.path(), "secret", "s3cret");
    // Each endpoint starts two clients at a time; `moved` is on y instead of x.
    let config = |moved: &str| {
        let mut toml =
            "[refresh]\nrequest_timeout = \"5s\"\nendpoint_concurrency = 1\n".to_string();
        for name in &names {
            let endpoint = if name.starts_with('x') && name != moved {
                &x.url
            } else {
                &y.url
            };
            toml.push_str(&common::in_process::client_table(name, endpoint, &secret));
        }
        common::in_process::load_config(dir.path(), &toml)
    };
    let old = config("");
    let h = InProcess::from_config(&old).await;
    // x5 waits in x's queue while y's starts are taken too, so the reload queues it at y: its
    // entry at x must not give it x's start (which it would then hand back to y).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let new = config("x5");
    let changes = tokend::testing::reconcile(
        &h.clients,
        &old,
        &new,
        &tokend::testing::http_client(),
        &mut tokend::testing::EndpointLimiters::new(1, Duration::ZERO),
    )
    .await;
    assert_eq!(changes.refetched, ["x5"]);
    for name in &names {
        h.get(name, 0).await.unwrap();
    }
    assert_eq!((x.count(), y.count()), (5, 7));
    // The refreshes a few minutes on take their turns as the first fetches did.
    tokio::time::sleep(secs(280)).await;
    assert_eq!((x.count(), y.count()), (10, 14));
    assert!(h.clients.responsive(secs(1)).await);
    assert!(
        h.clients.supervisor().get_cell().get_children().is_empty(),
        "all asleep"
    );
}

#[tokio::test(start_paused = true)]
async fn schedules_follow_the_monotonic_clock_not_the_wall_clock() {
    // On the paused clock the monotonic clock runs on while the wall clock stands still: the
    // sharpest possible disagreement between the two. Refreshes still come once per token,
    // 70-80% into each 60 s lifetime: no storm, none missed.
    let endpoint = FaultEndpoint::start(Reply::token("t", 60)).await;
    let h = start(&endpoint, &["app"], "").await;
    let wall = std::time::SystemTime::now();
    tokio::time::sleep(secs(1000)).await;
    assert!(std::time::SystemTime::now().duration_since(wall).unwrap() < secs(5));
    let t = endpoint.times_since(h.t0);
    // 60 s tokens: refresh at 70-80% of the lifetime, capped 15 s (a quarter) before expiry.
    for pair in t.windows(2) {
        assert!((42.0..=45.01).contains(&(pair[1] - pair[0])), "{t:?}");
    }
    assert!(
        (23..=24).contains(&t.len()),
        "{} requests in 1000 s",
        t.len()
    );
    assert!(h.get("app", 0).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_crash_mid_request_keeps_the_token_and_an_exhausted_budget_is_visible() {
    let endpoint = FaultEndpoint::start(Reply::token("t", 300)).await;
    endpoint.then([
        Reply::token("first", 300),
        Reply::token("orphaned", 300).after(secs(3)),
    ]);
    let h = start(&endpoint, &["app"], "").await;
    let running = || h.clients.supervisor().get_cell().get_children();
    let kill = |when: &str| {
        let children = running();
        assert_eq!(
            children.len(),
            1,
            "{when}: one actor while a request is in flight"
        );
        children[0].kill();
    };
    let first = h.get("app", 0).await.unwrap();
    tokio::time::sleep(secs(1)).await;
    assert!(running().is_empty(), "no actor while nothing is due");
    // A caller's report wakes the client; its request takes 3 s, and its actor dies meanwhile.
    let report = h.service.refresh_token(Request::new(RefreshTokenRequest {
        client: "app".into(),
        rejected_access_token: "first".into(),
    }));
    let (reported, _) = tokio::join!(report, async {
        tokio::time::sleep(secs(1)).await;
        kill("reported");
    });
    // The restarted actor waited for the orphaned request, then asked again.
    assert_eq!(reported.unwrap().into_inner().to_proto().access_token, "t");
    assert_eq!(endpoint.count(), 3);
    assert_ne!(h.get("app", 0).await.unwrap().expires_at, first.expires_at);
    tokio::time::sleep(secs(1)).await;
    assert!(running().is_empty(), "asleep again");
    // Past the restart window: that restart no longer counts.
    tokio::time::sleep(tokend::testing::RESTART_WINDOW).await;

    // Every request now takes 4 s, and every restarted actor is killed before it is answered.
    endpoint.otherwise(Reply::token("t", 300).after(secs(4)));
    // Polled once: far enough to send the report, not to wait for its answer.
    h.service
        .refresh_token(Request::new(RefreshTokenRequest {
            client: "app".into(),
            rejected_access_token: "t".into(),
        }))
        .now_or_never();
    tokio::time::sleep(secs(1)).await;
    for i in 0..=tokend::testing::MAX_RESTARTS {
        kill(&format!("restart {i}"));
        tokio::time::sleep(secs(1)).await;
    }
    let s = h.status("app").await;
    assert_eq!(s.state, state(proto::ClientState::Failed));
    assert!(s.last_error.contains("restart budget"), "{}", s.last_error);
    assert!(
        h.get("app", 0).await.is_ok(),
        "the last valid token is still served"
    );
}

/// The claims of a DPoP proof as the fault endpoint saw it.
fn proof_claims(seen: &fault::Seen) -> serde_json::Value {
    common::jwt_claims(seen.dpop.as_deref().expect("a DPoP proof"))
}

#[tokio::test(start_paused = true)]
async fn a_dpop_client_meets_a_nonce_once_per_request_and_remembers_the_newest() {
    let endpoint = FaultEndpoint::start(Reply::token("unused", 300)).await;
    let nonce_please = |nonce: &str| {
        Reply::json(400, serde_json::json!({"error": "use_dpop_nonce"})).header("DPoP-Nonce", nonce)
    };
    let dpop_token = Reply::json(
        200,
        serde_json::json!({"access_token": "bound", "token_type": "DPoP", "expires_in": 300}),
    )
    .header("DPoP-Nonce", "n-3");
    endpoint.then([
        // An attempt: the nonce asked for, then another one asked for: the attempt fails
        // rather than loop.
        nonce_please("n-1"),
        nonce_please("n-2"),
        // The next attempt starts with the newest nonce; one that is not a nonce is ignored.
        nonce_please("not a nonce"),
        nonce_please("n-2b"),
        dpop_token,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let secret = common::secret_file(dir.path(), "secret", "s3cret");
    let toml = format!(
        "[refresh]\nbackoff_min = \"1s\"\nbackoff_max = \"2s\"\n{}dpop = true\ndpop_key_file = \"{}/c.dpop.pem\"\n",
        common::in_process::client_table("c", &endpoint.url, &secret),
        dir.path().display()
    );
    let config = common::in_process::load_config(dir.path(), &toml);
    route_logs();
    let h = InProcess::from_config(&config).await;
    let token = h.get("c", 0).await.unwrap();
    assert_eq!(
        (token.access_token.as_str(), token.token_type.as_str()),
        ("bound", "DPoP")
    );
    let seen = endpoint.seen();
    let nonces: Vec<_> = seen
        .iter()
        .map(|s| proof_claims(s)["nonce"].clone())
        .collect();
    assert_eq!(
        nonces,
        [
            serde_json::Value::Null,
            "n-1".into(),
            "n-2".into(),
            "n-2".into(),
            "n-2b".into()
        ]
    );
    // One key, a fresh jti per proof, and the token request's method and URI.
    let headers: Vec<_> = seen
        .iter()
        .map(|s| common::jwt_header(s.dpop.as_deref().unwrap()))
        .collect();
    assert!(
        headers
            .iter()
            .all(|h| h["jwk"] == headers[0]["jwk"] && h["typ"] == "dpop+jwt")
    );
    let jtis: std::collections::HashSet<_> = seen
        .iter()
        .map(|s| proof_claims(s)["jti"].to_string())
        .collect();
    assert_eq!(jtis.len(), seen.len());
    let claims = proof_claims(&seen[0]);
    assert_eq!(claims["htm"], "POST");
    assert_eq!(claims["htu"], endpoint.url.as_str());
    assert!(
        claims.get("ath").is_none(),
        "no access token at the token endpoint"
    );
    let status = h.status("c").await;
    assert_eq!(status.consecutive_failures, 0);
}
