//! Many clients against one local token endpoint: how long until every client has its token,
//! how many token requests ran at once (the per-endpoint cap must hold), how much memory the
//! daemon then holds, and how much CPU it uses while nothing is due.

use std::path::Path;
use std::time::Duration;

use tokend::proto::{ClientState, ListClientsRequest};
use tokio::time::Instant;

use crate::endpoint::Endpoint;
use crate::load::connect;
use crate::process::{Cpus, start_tokend};

pub struct Scale {
    pub clients: usize,
    /// From the daemon's start until the endpoint answered the last client's token request.
    pub all_fresh: Duration,
    pub peak_requests: usize,
    /// Token requests during the idle window (none are due).
    pub idle_requests: u64,
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// Resident memory at the end of the idle window.
    pub idle_rss_kib: u64,
    pub idle: Duration,
    pub idle_cpu: Duration,
    pub idle_switches: u64,
}

pub struct Settings<'a> {
    pub tokend: &'a Path,
    pub budget: (usize, Duration),
    pub endpoint_latency: Duration,
    pub idle: Duration,
    pub cpus: &'a Cpus,
    pub ticks_per_sec: u64,
}

pub async fn run(clients: usize, s: &Settings<'_>) -> Result<Scale, String> {
    let endpoint = Endpoint::start(s.endpoint_latency)
        .await
        .map_err(|e| format!("token endpoint: {e}"))?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let server = start_tokend(
        s.tokend,
        dir.path(),
        &endpoint.url,
        clients,
        s.budget,
        s.cpus,
    )
    .await?;
    // Generous: the budget alone allows one start per spacing, four at a time.
    let limit = Duration::from_secs(120) + s.budget.1 * clients as u32 * 4;
    let all_fresh = loop {
        if endpoint.answered() >= clients as u64 {
            break started.elapsed();
        }
        if started.elapsed() > limit {
            return Err(format!(
                "{clients} clients: only {} tokens after {limit:?}: {}",
                endpoint.answered(),
                server.log_tail()
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Let the last answers be published and the start-up's transient allocations be freed.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = server.sample()?;
    let requests_before = endpoint.received();
    tokio::time::sleep(s.idle).await;
    let idle_end = server.sample()?;
    let idle_requests = endpoint.received() - requests_before;
    // Checked after the idle window, so that no call disturbs it.
    let listed = connect(&server.socket)
        .await?
        .list_clients(ListClientsRequest {})
        .await
        .map_err(|e| format!("ListClients: {e}"))?
        .into_inner()
        .clients;
    let fresh = listed
        .iter()
        .filter(|c| c.state == ClientState::Fresh as i32 && c.has_valid_token)
        .count();
    if fresh != clients {
        return Err(format!("{clients} clients: only {fresh} fresh"));
    }
    server.stop();
    Ok(Scale {
        clients,
        all_fresh,
        peak_requests: endpoint.peak(),
        idle_requests,
        rss_kib: settled.rss_kib,
        hwm_kib: settled.hwm_kib,
        idle_rss_kib: idle_end.rss_kib,
        idle: s.idle,
        idle_cpu: Duration::from_secs_f64(
            idle_end.cpu_ticks.saturating_sub(settled.cpu_ticks) as f64 / s.ticks_per_sec as f64,
        ),
        idle_switches: idle_end.switches.saturating_sub(settled.switches),
    })
}
