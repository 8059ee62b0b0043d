//! `grpc.health.v1` for probes: `""` is SERVING while the server runs, and
//! `tokend.v1.TokenService` is SERVING only while every client marked `required` holds a valid
//! token (a host or pod whose callers would otherwise be refused is not ready). Followed from
//! the store's changes and from the expiry of the tokens it rests on, which change nothing.

use std::sync::Arc;

use tokio::time::Instant;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::store::TokenStore;

/// The service name probes ask about for readiness.
pub const TOKEN_SERVICE: &str = "tokend.v1.TokenService";

/// Store changes this close together are judged together. Judging reads every required
/// client, and at start (or after an outage) thousands of clients get tokens one after another:
/// once per change that is quadratic in the clients (4 s of CPU at 10,000), once per this it is
/// not. Probes come seconds apart, so the delay is never seen.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether every required client holds a token valid at `now`, and when the first of those
/// tokens expires (when readiness ends unless a refresh comes first).
pub fn readiness(store: &TokenStore, now: Instant) -> (bool, Option<Instant>) {
    let mut first_expiry: Option<Instant> = None;
    for slot in store.all() {
        if !slot.settings().required {
            continue;
        }
        match slot.view().token.as_ref().filter(|t| t.is_valid(now)) {
            Some(token) => {
                let expires = token.expires_at;
                first_expiry = Some(first_expiry.map_or(expires, |e| e.min(expires)));
            }
            None => return (false, None),
        }
    }
    (true, first_expiry)
}

/// Keeps `reporter`'s status of [`TOKEN_SERVICE`] current for as long as the daemon runs.
pub async fn report(store: Arc<TokenStore>, reporter: HealthReporter) {
    let mut changes = store.changed.subscribe();
    let mut last = None;
    loop {
        let (ready, until) = readiness(&store, Instant::now());
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        // Watchers hear every status set, so only a change is set.
        if last != Some(status) {
            reporter.set_service_status(TOKEN_SERVICE, status).await;
            last = Some(status);
        }
        // Until the store changes, or the first required token expires. The store is held
        // here, so its channel cannot close; were it closed, this task would end (reported).
        let woke = match until {
            Some(at) => tokio::time::timeout_at(at, changes.changed())
                .await
                .unwrap_or(Ok(())),
            None => changes.changed().await,
        };
        if woke.is_err() {
            return;
        }
        tokio::time::sleep(COALESCE).await;
        changes.borrow_and_update();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use tonic_health::pb::health_check_response::ServingStatus as Wire;
    use tonic_health::pb::health_server::Health;
    use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
    use tonic_health::server::HealthService;

    use super::*;
    use crate::access::Access;
    use crate::oauth::Grant;
    use crate::secret::AccessToken;
    use crate::store::{ClientSlot, ClientState, Refresher, SlotSettings, Token};

    fn slot(store: &TokenStore, name: &str, required: bool) -> Arc<ClientSlot> {
        let (refresher, _) = Refresher::channel();
        let settings = SlotSettings {
            grant: Grant::ClientCredentials,
            authorize_command: None,
            access: Access::default(),
            required,
            min_interval: Duration::from_secs(1),
        };
        let slot = Arc::new(ClientSlot::new(
            name.into(),
            settings,
            refresher,
            store.changed.clone(),
        ));
        store.insert(slot.clone());
        slot
    }

    fn give_token(slot: &ClientSlot, lifetime: Duration) {
        let (now, wall) = (Instant::now(), SystemTime::now());
        slot.publish(|v| {
            v.token = Some(Arc::new(Token {
                generation: 1,
                access_token: AccessToken::new("at".into()),
                token_type: crate::oauth::TokenType::Bearer,
                scope: "".into(),
                received_at: now,
                received_wall: wall,
                expires_at: now + lifetime,
                refresh_due: now + lifetime / 2,
                dpop_key: None,
            }));
            v.state = ClientState::Fresh;
        });
    }

    async fn status(health: &HealthService, service: &str) -> Wire {
        let reply: HealthCheckResponse = health
            .check(tonic::Request::new(HealthCheckRequest {
                service: service.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        reply.status()
    }

    /// Lets the reporting task run on the paused clock.
    /// Lets the reporter judge what changed.
    async fn settle() {
        tokio::time::sleep(COALESCE * 2).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn ready_only_while_every_required_client_holds_a_valid_token() {
        let store = Arc::new(TokenStore::default());
        let billing = slot(&store, "billing", true);
        let optional = slot(&store, "optional", false);
        let reporter = HealthReporter::new();
        let health = HealthService::from_health_reporter(reporter.clone());
        tokio::spawn(report(store.clone(), reporter));
        settle().await;
        assert_eq!(status(&health, "").await, Wire::Serving);
        assert_eq!(status(&health, TOKEN_SERVICE).await, Wire::NotServing);

        // An optional client's token does not make the service ready; the required one's does.
        give_token(&optional, Duration::from_secs(600));
        settle().await;
        assert_eq!(status(&health, TOKEN_SERVICE).await, Wire::NotServing);
        give_token(&billing, Duration::from_secs(60));
        settle().await;
        assert_eq!(status(&health, TOKEN_SERVICE).await, Wire::Serving);

        // Unrefreshed, the token expires and readiness ends with it, though nothing changed.
        tokio::time::sleep(Duration::from_secs(59)).await;
        settle().await;
        assert_eq!(status(&health, TOKEN_SERVICE).await, Wire::Serving);
        tokio::time::sleep(Duration::from_secs(2)).await;
        settle().await;
        assert_eq!(status(&health, TOKEN_SERVICE).await, Wire::NotServing);
        assert_eq!(status(&health, "").await, Wire::Serving);

        // A required client removed by a reload no longer counts.
        store.remove("billing");
        settle().await;
        assert_eq!(status(&health, TOKEN_SERVICE).await, Wire::Serving);
    }

    #[tokio::test(start_paused = true)]
    async fn watchers_hear_each_change_once() {
        use futures_util::StreamExt;
        let store = Arc::new(TokenStore::default());
        let billing = slot(&store, "billing", true);
        let reporter = HealthReporter::new();
        let health = HealthService::from_health_reporter(reporter.clone());
        tokio::spawn(report(store.clone(), reporter));
        settle().await;
        let mut watch = health
            .watch(tonic::Request::new(HealthCheckRequest {
                service: TOKEN_SERVICE.into(),
            }))
            .await
            .unwrap()
            .into_inner();
        let next = |w: &mut <HealthService as Health>::WatchStream| {
            let item = futures_util::FutureExt::now_or_never(w.next());
            item.flatten().map(|r| r.unwrap().status())
        };
        assert_eq!(next(&mut watch), Some(Wire::NotServing));
        // Changes that leave readiness as it was are not reported.
        billing.publish(|v| v.consecutive_failures += 1);
        settle().await;
        assert_eq!(next(&mut watch), None);
        give_token(&billing, Duration::from_secs(60));
        settle().await;
        assert_eq!(next(&mut watch), Some(Wire::Serving));
        give_token(&billing, Duration::from_secs(60));
        settle().await;
        assert_eq!(next(&mut watch), None);
        tokio::time::sleep(Duration::from_secs(61)).await;
        settle().await;
        assert_eq!(next(&mut watch), Some(Wire::NotServing));
    }
}
