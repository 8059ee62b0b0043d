//! No internal task dies silently. A hostile endpoint's `Retry-After` of years once panicked the
//! shared timer wheel: every sleeping client of every endpoint then slept forever while the
//! systemd watchdog kept reporting the daemon healthy. Here the real daemon, fed that reply,
//! keeps refreshing another endpoint's client and keeps pinging the watchdog; a wheel that dies
//! anyway is restarted with every sleeping client's alarm; and a supervisor that fails takes
//! the watchdog's pings with it.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokend::testing::SupervisorMsg;
use tokio::time::Instant;

use crate::common::in_process::{InProcess, client_table};
use crate::common::notify::NotifySocket;
use crate::common::{KillOnDrop, eventually, secret_file};
use crate::fault::{FaultEndpoint, Reply};

/// `tokend serve` on `config`, its stderr in `dir/tokend.log`, under a watchdog of 1 s.
fn serve(dir: &Path, config: &str, notify: &NotifySocket) -> KillOnDrop {
    let path = dir.join("tokend.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nsocket = \"{}\"\n{config}",
            dir.join("tokend.sock").display()
        ),
    )
    .unwrap();
    KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_tokend"))
            .args(["serve", "--config"])
            .arg(&path)
            .env("RUST_LOG", "tokend=debug,info")
            .env("NO_COLOR", "1")
            .env("NOTIFY_SOCKET", &notify.path)
            .env("WATCHDOG_USEC", "1000000")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("tokend.log")).unwrap())
            .spawn()
            .unwrap(),
    )
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("tokend.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn years_of_retry_after_neither_starve_other_clients_nor_fool_the_watchdog() {
    let years = (3 * 365 * 86_400u64).to_string();
    let hostile = FaultEndpoint::start(
        Reply::json(503, serde_json::json!({"error": "temporarily_unavailable"}))
            .header("Retry-After", &years),
    )
    .await;
    // Two-second tokens: refreshed about every 1.5 s.
    let victim = FaultEndpoint::start(Reply::token("victim-token", 2)).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret", "s3cret");
    let notify = NotifySocket::bind(dir.path());
    let mut daemon = serve(
        dir.path(),
        &format!(
            "{}{}",
            client_table("hostile", &hostile.url, &secret),
            client_table("victim", &victim.url, &secret)
        ),
        &notify,
    );
    eventually(
        Duration::from_secs(10),
        "the hostile endpoint's answer",
        || async { (hostile.count() >= 1 && victim.count() >= 1).then_some(()) },
    )
    .await;
    // Let the failure reach the timer wheel, then watch for six seconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (from, before) = (Instant::now(), victim.count());
    tokio::time::sleep(Duration::from_secs(6)).await;
    let refreshes = victim.count() - before;
    assert!(
        refreshes >= 3,
        "the victim was refreshed {refreshes} times in 6 s after the hostile Retry-After: {}",
        log(dir.path())
    );
    let pings = notify.count_since(from, "WATCHDOG=1");
    assert!(pings >= 9, "{pings} watchdog pings in 6 s");
    assert!(
        daemon.0.try_wait().unwrap().is_none(),
        "{}",
        log(dir.path())
    );
    let text = log(dir.path());
    assert_eq!(
        text.matches("refresh.retry_after_max").count(),
        1,
        "the cap is logged once: {text}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_capped_retry_after_is_logged_once_per_episode_not_per_attempt() {
    let years = u64::MAX.to_string();
    let hostile = FaultEndpoint::start(
        Reply::json(429, serde_json::json!({"error": "slow_down"})).header("Retry-After", &years),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let secret = secret_file(dir.path(), "secret", "s3cret");
    let notify = NotifySocket::bind(dir.path());
    let _daemon = serve(
        dir.path(),
        &format!(
            "[refresh]\nretry_after_max = \"1s\"\nbackoff_max = \"1s\"\n{}",
            client_table("hostile", &hostile.url, &secret)
        ),
        &notify,
    );
    eventually(Duration::from_secs(15), "four attempts", || async {
        (hostile.count() >= 4).then_some(())
    })
    .await;
    let times: Vec<Instant> = hostile.seen().iter().map(|s| s.at).collect();
    for w in times.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap < Duration::from_millis(1900),
            "waited {gap:?}, cap is 1 s"
        );
    }
    let text = log(dir.path());
    assert_eq!(
        text.matches("refresh.retry_after_max").count(),
        1,
        "once for {} attempts: {text}",
        times.len()
    );
}

/// One client, `sleeper`, on `endpoint`, run in-process (on the paused clock).
async fn in_process(endpoint: &FaultEndpoint) -> InProcess {
    InProcess::start(
        &endpoint.url,
        &["sleeper"],
        "[refresh]\nrequest_timeout = \"5s\"",
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn a_dead_wheel_is_restarted_with_every_sleeping_clients_alarm() {
    // One-minute tokens: refreshed 42-45 s after each arrives, asleep in the wheel meanwhile.
    let endpoint = FaultEndpoint::start(Reply::token("t", 60)).await;
    let h = in_process(&endpoint).await;
    let clients = &h.clients;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(endpoint.count(), 1);
    // What the wheel's watcher sends when its task panics (alarm.rs shows a real panic doing
    // so): the alarm the sleeping client had went with the dead wheel.
    clients
        .supervisor()
        .cast(SupervisorMsg::WheelDied("test: a panic".into()))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert!(
        endpoint.count() >= 300 / 45,
        "refreshed {} times in 5 min after the wheel was restarted",
        endpoint.count()
    );
    assert!(clients.responsive(Duration::from_secs(1)).await);
}

#[tokio::test(start_paused = true)]
async fn a_wheel_that_keeps_dying_fails_the_supervisor_and_stops_the_watchdogs_pings() {
    let endpoint = FaultEndpoint::start(Reply::token("t", 60)).await;
    let h = in_process(&endpoint).await;
    let clients = &h.clients;
    assert!(clients.responsive(Duration::from_secs(1)).await);
    for _ in 0..6 {
        let _ = clients
            .supervisor()
            .cast(SupervisorMsg::WheelDied("test: a panic".into()));
    }
    // The daemon selects on this to exit non-zero.
    tokio::time::timeout(Duration::from_secs(5), clients.stopped())
        .await
        .expect("the supervisor fails after the wheel's restart budget");
    assert!(!clients.responsive(Duration::from_secs(1)).await);
}
