//! Refresh floods: an allowed caller reports its token as rejected, or demands more validity
//! than the token has, hundreds of times a second. Callers together cause at most one token
//! request per client per `refresh.min_interval`; within it they get the current token or wait
//! for the next request. A demand beyond the tokens' whole lifetime costs no request at all.
//! On tokio's paused clock, against the fault endpoint, in process.

use std::time::Duration;

use futures::future::join_all;
use tokend::proto::{GetTokenRequest, RefreshTokenRequest};
use tokend::testing::TokenService;
use tokio::time::Instant;
use tonic::{Code, Request};

use crate::common::in_process::InProcess;
use crate::fault::{FaultEndpoint, Reply};

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

async fn start(endpoint: &FaultEndpoint) -> InProcess {
    InProcess::start(
        &endpoint.url,
        &["app"],
        "[refresh]\nmin_interval = \"5s\"\nrequest_timeout = \"5s\"",
    )
    .await
}

fn report(token: &str, deadline: Duration) -> Request<RefreshTokenRequest> {
    let mut req = Request::new(RefreshTokenRequest {
        client: "app".into(),
        rejected_access_token: token.into(),
    });
    req.metadata_mut().insert(
        "grpc-timeout",
        format!("{}m", deadline.as_millis()).parse().unwrap(),
    );
    req
}

fn demand(min_valid: u32, deadline: Duration) -> Request<GetTokenRequest> {
    let mut req = Request::new(GetTokenRequest {
        client: "app".into(),
        min_valid_seconds: min_valid,
    });
    req.metadata_mut().insert(
        "grpc-timeout",
        format!("{}m", deadline.as_millis()).parse().unwrap(),
    );
    req
}

/// Waits for the first token, and a second more, so that its request is not counted with what
/// follows (the paused clock does not move while a request is answered).
async fn first_token(h: &InProcess) {
    h.service.get_token(demand(0, secs(10))).await.unwrap();
    tokio::time::sleep(secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_thousand_reports_over_ten_seconds_cause_at_most_one_request_per_interval() {
    // Every token is "t": each report names the current token, so each asks for a refresh.
    let endpoint = FaultEndpoint::start(Reply::token("t", 300)).await;
    let h = start(&endpoint).await;
    first_token(&h).await;
    let t0 = Instant::now();
    // One report every 10 ms; half the callers wait up to 30 s, half give up after one.
    let reports = (0..1000u64).map(|i| {
        let service = &h.service;
        async move {
            tokio::time::sleep_until(t0 + Duration::from_millis(i * 10)).await;
            let deadline = if i % 2 == 0 { secs(30) } else { secs(1) };
            service.refresh_token(report("t", deadline)).await
        }
    });
    let answers = join_all(reports).await;
    for answer in answers {
        assert_eq!(answer.unwrap().into_inner().to_proto().access_token, "t");
    }
    let during = endpoint.times_since(t0);
    assert!(
        (2..=3).contains(&during.len()),
        "10 s / 5 s + 1 at most, and reports still cause refreshes: {} requests, the first at {:?}",
        during.len(),
        &during[..during.len().min(5)]
    );
    for pair in during.windows(2) {
        assert!(pair[1] - pair[0] >= 5.0, "{during:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn demands_of_min_valid_are_limited_the_same_way() {
    // 60 s tokens; callers want 59 s, so every token falls short a second after it came.
    let endpoint = FaultEndpoint::start(Reply::token("t", 60)).await;
    let h = start(&endpoint).await;
    first_token(&h).await;
    let t0 = Instant::now();
    let demands = (0..1000u64).map(|i| {
        let service = &h.service;
        async move {
            tokio::time::sleep_until(t0 + Duration::from_millis(i * 10)).await;
            service.get_token(demand(59, secs(1))).await
        }
    });
    let answers = join_all(demands).await;
    let mut limited = 0;
    for answer in answers {
        match answer {
            Ok(token) => assert_eq!(token.into_inner().to_proto().access_token, "t"),
            Err(e) => {
                assert_eq!(e.code(), Code::Unavailable, "{e:?}");
                assert!(e.message().contains("refresh.min_interval"), "{e:?}");
                limited += 1;
            }
        }
    }
    assert!(limited > 0, "some demands fell within an interval");
    let during = endpoint.times_since(t0);
    assert!(during.len() <= 3, "{} requests", during.len());
}

#[tokio::test(start_paused = true)]
async fn min_valid_beyond_the_tokens_lifetime_is_out_of_range_and_costs_no_request() {
    let endpoint = FaultEndpoint::start(Reply::token("t", 60)).await;
    let h = start(&endpoint).await;
    first_token(&h).await;
    let t0 = Instant::now();
    for _ in 0..100 {
        let err = h
            .service
            .get_token(demand(120, secs(30)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
        assert!(err.message().contains("valid for 60s"), "{}", err.message());
    }
    assert_eq!(t0.elapsed(), Duration::ZERO, "answered at once");
    assert_eq!(
        endpoint.count(),
        1,
        "no request for a demand no token can meet"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_reports_coalesce_and_later_ones_wait_for_the_deferred_request() {
    let endpoint = FaultEndpoint::start(Reply::token("t4", 300)).await;
    endpoint.then([
        Reply::token("t1", 300),
        Reply::token("t2", 300).after(secs(1)),
        Reply::token("t3", 300).after(secs(1)),
    ]);
    let h = start(&endpoint).await;
    first_token(&h).await;
    let t0 = Instant::now();
    // A hundred reports of one token at once: one request.
    let first = join_all((0..100).map(|_| h.service.refresh_token(report("t1", secs(30))))).await;
    for answer in first {
        assert_eq!(answer.unwrap().into_inner().to_proto().access_token, "t2");
    }
    assert_eq!(endpoint.times_since(t0).len(), 1);
    // Its replacement is reported a second later, within the interval: the next request
    // waits for the end of it, and so do callers whose deadline allows.
    tokio::time::sleep_until(t0 + secs(2)).await;
    let second = join_all((0..100).map(|_| h.service.refresh_token(report("t2", secs(30))))).await;
    for answer in second {
        assert_eq!(answer.unwrap().into_inner().to_proto().access_token, "t3");
    }
    let during = endpoint.times_since(t0);
    assert_eq!(during.len(), 2, "{during:?}");
    assert!((5.0..5.1).contains(&during[1]), "{during:?}");
    // A caller that cannot wait that long gets the current token at once.
    let quick = h
        .service
        .refresh_token(report("t3", secs(1)))
        .await
        .unwrap()
        .into_inner()
        .to_proto();
    assert_eq!(quick.access_token, "t3");
}
