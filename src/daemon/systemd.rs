//! systemd integration: readiness (READY=1 once every required client has a token, or after the
//! start-up limit), a STATUS= line kept current, the watchdog (pinged only while the supervisor
//! answers), RELOADING=1 and STOPPING=1, and sockets passed by socket activation. Outside systemd
//! (no NOTIFY_SOCKET) every notification is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::refresh::clients::Clients;
use crate::store::{ClientState, TokenStore};

/// A STATUS= line is sent at most this often while clients churn.
const STATUS_MIN_INTERVAL: Duration = Duration::from_millis(500);

/// While starting, changes this close together are judged together: judging reads every
/// client, and thousands get their first tokens one after another (once per change that is
/// quadratic in the clients). READY=1 comes at most this much later.
const STARTING_COALESCE: Duration = Duration::from_millis(100);

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!("sd_notify failed: {e}");
    }
}

pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// "3/3 clients fresh", with the clients that have no token named.
pub fn summary(store: &TokenStore) -> (String, Vec<String>) {
    let slots = store.all();
    let now = Instant::now();
    let mut missing = Vec::new();
    let mut fresh = 0;
    for slot in &slots {
        let view = slot.view();
        if view.token.as_ref().is_some_and(|t| t.is_valid(now)) {
            if view.state == ClientState::Fresh || view.state == ClientState::Refreshing {
                fresh += 1;
            }
        } else if slot.settings().required {
            missing.push(slot.name.to_string());
        }
    }
    let mut line = format!("{fresh}/{} clients fresh", slots.len());
    if !missing.is_empty() {
        line.push_str(&format!("; without a token: {}", missing.join(", ")));
    }
    (line, missing)
}

/// Sends READY=1 once every required client has a token, or when `startup_timeout` ends
/// (naming those without one), then keeps STATUS= current until the process ends.
pub async fn report_status(store: std::sync::Arc<TokenStore>, startup_timeout: Duration) {
    let deadline = Instant::now() + startup_timeout;
    let mut changes = store.changed.subscribe();
    loop {
        let (line, missing) = summary(&store);
        if missing.is_empty() {
            info!(status = %line, "ready");
            notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
            break;
        }
        if Instant::now() >= deadline {
            warn!(status = %line, "start-up limit reached; reporting ready without every required client");
            notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
            break;
        }
        notify(&[NotifyState::Status(&format!("starting: {line}"))]);
        let _ = tokio::time::timeout_at(deadline, changes.changed()).await;
        tokio::time::sleep_until(deadline.min(Instant::now() + STARTING_COALESCE)).await;
        changes.borrow_and_update();
    }
    let mut last = String::new();
    loop {
        // The store outlives this task: a closed channel cannot happen, and would only end it.
        if changes.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(STATUS_MIN_INTERVAL).await;
        let (line, _) = summary(&store);
        if line != last {
            notify(&[NotifyState::Status(&line)]);
            last = line;
        }
    }
}

/// Sends READY=1 after a reload, with the current status.
pub fn ready_again(store: &TokenStore) {
    let (line, _) = summary(store);
    notify(&[NotifyState::Ready, NotifyState::Status(&line)]);
}

/// Pings the watchdog at half the interval systemd asks for, but only while the supervisor
/// and its timer wheel answer: a wedged actor system, or a wheel that no longer wakes sleeping
/// clients, must let systemd restart the daemon.
pub async fn watchdog(clients: &Clients) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return std::future::pending().await;
    };
    let period = interval / 2;
    info!(interval = ?interval, "systemd watchdog enabled");
    let mut ticks = tokio::time::interval(period);
    loop {
        ticks.tick().await;
        if clients.responsive(period).await {
            notify(&[NotifyState::Watchdog]);
        } else {
            warn!("supervisor or timer wheel did not answer; withholding the watchdog ping");
        }
    }
}

/// Listeners passed by systemd socket activation (`LISTEN_FDS`), if any.
pub fn activated_listeners() -> std::io::Result<Vec<Activated>> {
    let mut fds = listenfd::ListenFd::from_env();
    let mut listeners = Vec::new();
    for index in 0..fds.len() {
        if let Ok(Some(unix)) = fds.take_unix_listener(index) {
            unix.set_nonblocking(true)?;
            listeners.push(Activated::Unix(tokio::net::UnixListener::from_std(unix)?));
        } else if let Ok(Some(tcp)) = fds.take_tcp_listener(index) {
            tcp.set_nonblocking(true)?;
            listeners.push(Activated::Tcp(tokio::net::TcpListener::from_std(tcp)?));
        }
    }
    Ok(listeners)
}

pub enum Activated {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
}
