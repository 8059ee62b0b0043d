//! Provider-supplied times: a `Retry-After` of years (as seconds or in any HTTP date format), a
//! next attempt after year 9999, `u64::MAX` seconds, absurd `expires_in`, `exp` and `iat`. The
//! hostile endpoint's client gets a bounded schedule and a clear error; a client of another
//! endpoint in the same daemon keeps being refreshed on time. Over real HTTP against the fault
//! endpoint, on tokio's paused clock.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use tokend::proto;
use tonic::Code;

use crate::common::in_process::InProcess;
use crate::fault::{FaultEndpoint, Reply};

/// The victim's tokens live 60 s and are refreshed 42-45 s after they arrive.
const VICTIM_LIFETIME: u64 = 60;
const VICTIM_GAP: f64 = 45.5;
/// The default `refresh.retry_after_max`.
const CAP: f64 = 600.0;

struct Pair {
    hostile: FaultEndpoint,
    victim: FaultEndpoint,
    app: InProcess,
}

/// One daemon with two clients: `hostile` on an endpoint answering `reply` to every request,
/// and `victim` on an endpoint of its own that issues 60-second tokens.
async fn pair(reply: Reply) -> Pair {
    let hostile = FaultEndpoint::start(reply).await;
    let victim = FaultEndpoint::start(Reply::token("victim-token", VICTIM_LIFETIME)).await;
    let app = InProcess::start_on(
        &[("hostile", &hostile.url), ("victim", &victim.url)],
        "[refresh]\nrequest_timeout = \"5s\"",
    )
    .await;
    Pair {
        hostile,
        victim,
        app,
    }
}

impl Pair {
    async fn get(&self, client: &str) -> Result<proto::Token, tonic::Status> {
        // A short deadline: a hostile client's next attempt is long after it.
        self.app.get_within(client, Duration::from_secs(1)).await
    }

    async fn status(&self, client: &str) -> proto::ClientStatus {
        self.app.status(client).await
    }

    /// Seconds since start of each request `endpoint` saw.
    fn times(&self, endpoint: &FaultEndpoint) -> Vec<f64> {
        endpoint.times_since(self.app.t0)
    }

    /// Runs the paused clock for `minutes`; then the victim must have been refreshed on
    /// schedule throughout, and still have a valid token.
    async fn victim_stays_fresh_for(&self, minutes: u64, case: &str) {
        tokio::time::sleep(Duration::from_secs(minutes * 60)).await;
        let times = self.times(&self.victim);
        let end = (minutes * 60) as f64;
        let mut last = 0.0;
        for t in times.iter().copied().chain([end]) {
            assert!(
                t - last <= VICTIM_GAP,
                "{case}: the victim went {:.0} s without a refresh (requests at {times:?})",
                t - last
            );
            last = t;
        }
        assert_eq!(
            self.get("victim").await.unwrap().access_token,
            "victim-token",
            "{case}"
        );
        assert_eq!(
            self.status("victim").await.state,
            proto::ClientState::Fresh as i32,
            "{case}"
        );
    }
}

fn unavailable(retry_after: &str) -> Reply {
    Reply::json(503, serde_json::json!({"error": "temporarily_unavailable"}))
        .header("Retry-After", retry_after)
}

/// Retry-After values of years, and beyond any calendar tokend can print.
fn hostile_retry_afters() -> Vec<(&'static str, String)> {
    vec![
        (
            "3 years of delta-seconds",
            (3 * 365 * 86_400u64).to_string(),
        ),
        (
            "a delay ending after year 9999",
            (300_000_000_000u64).to_string(),
        ),
        ("u64::MAX seconds", u64::MAX.to_string()),
        (
            "more digits than a u64 holds",
            "99999999999999999999999999999".into(),
        ),
        (
            "IMF-fixdate of year 9999",
            "Fri, 31 Dec 9999 23:59:59 GMT".into(),
        ),
        (
            "obsolete RFC 850 date decades ahead",
            "Sunday, 01-Jan-62 00:00:00 GMT".into(),
        ),
        (
            "asctime date of year 9999",
            "Fri Dec 31 23:59:59 9999".into(),
        ),
    ]
}

#[tokio::test(start_paused = true)]
async fn years_of_retry_after_never_stop_another_endpoints_client() {
    for (case, value) in hostile_retry_afters() {
        let p = pair(unavailable(&value)).await;
        p.victim_stays_fresh_for(35, case).await;
        // The hostile client was retried at most every retry_after_max, never given up on.
        let times = p.times(&p.hostile);
        assert!(times.len() >= 4, "{case}: hostile requests at {times:?}");
        for w in times.windows(2) {
            let gap = w[1] - w[0];
            assert!(
                (CAP - 1.0..=CAP + 1.0).contains(&gap),
                "{case}: Retry-After {value:?} should be capped to {CAP} s, was {gap} s ({times:?})"
            );
        }
        let status = p.status("hostile").await;
        assert_eq!(
            status.state,
            proto::ClientState::BackingOff as i32,
            "{case}: {}",
            status.last_error
        );
        let next = status.next_refresh_at.unwrap().seconds;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert!(next <= now + CAP as i64 + 1, "{case}: next attempt {next}");
        // The caller's error names the next attempt (its formatting once panicked past 9999).
        let e = p.get("hostile").await.unwrap_err();
        assert_eq!(e.code(), Code::Unavailable, "{case}: {e:?}");
        assert!(e.message().contains("next attempt at"), "{case}: {e:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn years_of_retry_after_on_an_operator_error_are_capped_too() {
    let rejected = Reply::json(400, serde_json::json!({"error": "invalid_client"}))
        .header("Retry-After", &u64::MAX.to_string());
    let p = pair(rejected).await;
    p.victim_stays_fresh_for(25, "invalid_client with u64::MAX")
        .await;
    let times = p.times(&p.hostile);
    assert!(times.len() >= 2, "{times:?}");
    // operator_retry (5 min) < retry_after_max (10 min) < u64::MAX: the cap wins.
    assert!(
        times.windows(2).all(|w| (w[1] - w[0] - CAP).abs() <= 1.0),
        "{times:?}"
    );
    let e = p.get("hostile").await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
}

fn jwt(claims: serde_json::Value) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    format!(
        "{}.{}.sig",
        b64(br#"{"alg":"none"}"#),
        b64(claims.to_string().as_bytes())
    )
}

#[tokio::test(start_paused = true)]
async fn absurd_lifetimes_are_clamped_without_hurting_anyone() {
    let replies = [
        (
            "expires_in 1e300",
            serde_json::json!({"access_token": "t", "expires_in": 1e300}),
        ),
        (
            "expires_in u64::MAX + 1 as a string",
            serde_json::json!({"access_token": "t", "expires_in": "18446744073709551616"}),
        ),
        (
            "JWT exp 1e300 and iat -1e300",
            serde_json::json!({"access_token": jwt(serde_json::json!({"exp": 1e300, "iat": -1e300}))}),
        ),
        (
            "JWT exp and iat u64::MAX",
            serde_json::json!({"access_token": jwt(serde_json::json!({"exp": u64::MAX, "iat": u64::MAX}))}),
        ),
        (
            "JWT exp i64::MIN",
            serde_json::json!({"access_token": jwt(serde_json::json!({"exp": i64::MIN, "iat": 0}))}),
        ),
    ];
    for (case, body) in replies {
        let p = pair(Reply::json(200, body)).await;
        p.victim_stays_fresh_for(10, case).await;
        let status = p.status("hostile").await;
        if status.state == proto::ClientState::Fresh as i32 {
            let t = p.get("hostile").await.unwrap();
            let lifetime = t.expires_at.unwrap().seconds - t.issued_at.unwrap().seconds;
            assert!(lifetime <= 86_400, "{case}: lifetime {lifetime}");
        } else {
            // An exp in the past is a transient error, retried with backoff.
            assert_eq!(
                status.state,
                proto::ClientState::BackingOff as i32,
                "{case}: {}",
                status.last_error
            );
            assert!(p.times(&p.hostile).len() >= 3, "{case}");
        }
    }
}
