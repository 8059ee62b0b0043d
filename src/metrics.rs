//! Prometheus metrics (OpenMetrics text): one registry for the process (the daemon has one set
//! of clients), fed with plain labels so that every part can report without this module
//! knowing any of them. [`crate::serve::metrics_http`] serves it.

use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClientLabel {
    pub client: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// The token endpoint's URL without query or fragment.
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub client: Arc<str>,
    /// "success" or "failure".
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub client: String,
    /// "transient" (retried with backoff) or "needs_operator".
    pub kind: &'static str,
    /// The OAuth error code, `http_NNN`, or one of network, timeout, too_large, bad_reply,
    /// credentials.
    pub error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub client: Arc<str>,
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateOnly {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The `[server]` key of the cap: max_watch_streams or max_waiting_calls.
    pub cap: &'static str,
    /// "total", or "per_uid" (the caller's own cap).
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GrpcLabels {
    pub method: &'static str,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteStatusLabels {
    pub route: String,
    /// "2xx" to "5xx": the status class the caller got.
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteReasonLabels {
    pub route: String,
    /// Replays: "new_token" or "dpop_nonce". Refusals: "caller", "no_token", "bad_request",
    /// "upstream_unreachable", "upstream_timeout", "connections".
    pub reason: &'static str,
}

/// Every metric tokend exports.
pub struct Metrics {
    registry: Registry,
    /// By endpoint, not by client: latency is the provider's, and a histogram per client would
    /// cost each client 16 series and half a kilobyte.
    pub request_duration: Family<EndpointLabel, Histogram>,
    pub endpoint_errors: Family<ErrorLabels, Counter>,
    pub grpc_requests: Family<GrpcLabels, Counter>,
    /// Counters of `grpc_requests` already created, by method and code (clones share the
    /// count).
    grpc_counters: [OnceLock<Counter>; GRPC_METHODS.len() * GRPC_CODES],
    pub watch_streams: Gauge,
    pub calls_refused: Family<RefusedLabels, Counter>,
    /// 1 while a client's newest refresh token is in memory only (see `oauth::unsaved`); no
    /// series otherwise.
    pub refresh_token_unsaved: Family<ClientLabel, Gauge>,
    pub proxy_requests: Family<RouteStatusLabels, Counter>,
    /// Time to the upstream's response headers.
    pub proxy_upstream_duration: Family<RouteLabel, Histogram>,
    pub proxy_replays: Family<RouteReasonLabels, Counter>,
    pub proxy_refusals: Family<RouteReasonLabels, Counter>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The methods whose calls are counted; each (method, status code) pair's counter is looked up
/// once and then kept, because every call counts and a lookup (label string, hash, lock) would
/// be a good part of what a GetToken call costs.
const GRPC_METHODS: [&str; 5] = [
    "GetToken",
    "WatchToken",
    "RefreshToken",
    "ListClients",
    "SignDpopProof",
];
/// gRPC status codes are 0 to 16.
const GRPC_CODES: usize = 17;

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tokend");
        let m = Metrics {
            // 5 ms to about 40 s: loopback providers answer in milliseconds, remote ones in
            // tenths of a second, and a stalled one runs into the request timeout.
            request_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.005, 2.0, 14))
            }),
            endpoint_errors: Family::default(),
            grpc_requests: Family::default(),
            grpc_counters: std::array::from_fn(|_| OnceLock::new()),
            watch_streams: Gauge::default(),
            calls_refused: Family::default(),
            refresh_token_unsaved: Family::default(),
            proxy_requests: Family::default(),
            proxy_upstream_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 16))
            }),
            proxy_replays: Family::default(),
            proxy_refusals: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "token_request_duration_seconds",
            "Duration of token requests to the token endpoint",
            m.request_duration.clone(),
        );
        registry.register(
            "token_endpoint_errors",
            "Failed token requests by kind and OAuth error code",
            m.endpoint_errors.clone(),
        );
        registry.register(
            "grpc_requests",
            "gRPC requests by method and status code",
            m.grpc_requests.clone(),
        );
        registry.register(
            "watch_streams_active",
            "Open WatchToken streams",
            m.watch_streams.clone(),
        );
        registry.register(
            "calls_refused",
            "Calls refused at a cap (RESOURCE_EXHAUSTED), by cap",
            m.calls_refused.clone(),
        );
        registry.register(
            "refresh_token_unsaved",
            "1 while the client's newest refresh token could not be written and is held in memory only (lost if tokend stops)",
            m.refresh_token_unsaved.clone(),
        );
        registry.register(
            "proxy_requests",
            "Requests through each proxy route, by the status class answered",
            m.proxy_requests.clone(),
        );
        registry.register(
            "proxy_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers, per proxy route",
            m.proxy_upstream_duration.clone(),
        );
        registry.register(
            "proxy_replays",
            "Requests a proxy route sent again (after a 401: with a new token, or with the server's DPoP nonce)",
            m.proxy_replays.clone(),
        );
        registry.register(
            "proxy_refusals",
            "Requests a proxy route answered itself, by reason",
            m.proxy_refusals.clone(),
        );
        registry.register(
            "build",
            "tokend's version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        Metrics { registry, ..m }
    }

    /// The OpenMetrics text exposition: this registry's metrics, then the per-client series
    /// of `clients` (every client's state, token expiry and token requests), and the totals by
    /// state, with a line for each of `states` even when no client is in it.
    pub fn encode(&self, clients: Vec<ClientSample>, states: &[&'static str]) -> String {
        let mut per_client = Registry::with_prefix("tokend");
        per_client.register_collector(Box::new(ClientCollector {
            clients,
            states: states.to_vec(),
        }));
        let mut out = String::new();
        text::encode_registry(&mut out, &self.registry)
            .and_then(|()| text::encode_registry(&mut out, &per_client))
            .and_then(|()| text::encode_eof(&mut out))
            .expect("writing to a String cannot fail");
        out
    }

    /// A call was refused at `cap` (a `[server]` key), its total or the caller's own.
    pub fn call_refused(&self, cap: &'static str, scope: &'static str) {
        self.calls_refused
            .get_or_create(&RefusedLabels { cap, scope })
            .inc();
    }

    /// A token request failed; `error` is the failure's short label (an OAuth error code,
    /// `http_NNN`, or a kind such as `network`).
    pub fn token_failed(&self, client: &str, kind: &'static str, error: String) {
        self.endpoint_errors
            .get_or_create(&ErrorLabels {
                client: client.to_string(),
                kind,
                error,
            })
            .inc();
    }

    /// Whether `client`'s newest refresh token is in memory only.
    pub fn refresh_token_unsaved(&self, client: &str, unsaved: bool) {
        let label = ClientLabel {
            client: client.into(),
        };
        if unsaved {
            self.refresh_token_unsaved.get_or_create(&label).set(1);
        } else {
            self.refresh_token_unsaved.remove(&label);
        }
    }

    /// A proxy route's per-request series, looked up once: a lookup (label string, hash, lock)
    /// on every request would cost more than the count.
    pub fn proxy_route(&self, route: &str) -> RouteMetrics {
        let answered = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            self.proxy_requests
                .get_or_create(&RouteStatusLabels {
                    route: route.to_string(),
                    class,
                })
                .clone()
        });
        let upstream = self
            .proxy_upstream_duration
            .get_or_create(&RouteLabel {
                route: route.to_string(),
            })
            .clone();
        RouteMetrics { answered, upstream }
    }

    pub fn proxy_replayed(&self, route: &str, reason: &'static str) {
        self.proxy_replays
            .get_or_create(&RouteReasonLabels {
                route: route.to_string(),
                reason,
            })
            .inc();
    }

    pub fn proxy_refused(&self, route: &str, reason: &'static str) {
        self.proxy_refusals
            .get_or_create(&RouteReasonLabels {
                route: route.to_string(),
                reason,
            })
            .inc();
    }

    pub fn request_took(&self, endpoint: &str, took: Duration) {
        self.request_duration
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_string(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn grpc(&self, method: &'static str, code: tonic::Code) {
        let create = || {
            self.grpc_requests
                .get_or_create(&GrpcLabels {
                    method,
                    code: format!("{code:?}"),
                })
                .clone()
        };
        let index = GRPC_METHODS.iter().position(|m| *m == method);
        let code_index = usize::try_from(i32::from(code)).unwrap_or(GRPC_CODES);
        match index.filter(|_| code_index < GRPC_CODES) {
            Some(m) => self.grpc_counters[m * GRPC_CODES + code_index]
                .get_or_init(create)
                .inc(),
            None => create().inc(),
        };
    }
}

/// One client's series, read from the clients at each scrape rather than kept here: a label
/// map entry and a shared counter per series cost 10,000 clients about 3 MB, while the values
/// are already held by each client (its state and token) or cost it two counters.
#[derive(Debug)]
pub struct ClientSample {
    pub client: Arc<str>,
    pub state: &'static str,
    /// When its current token expires (Unix time); no series while it has none.
    pub expires_unix: Option<f64>,
    /// Token requests answered with a token, and failed ones, since the client was added.
    pub succeeded: u64,
    pub failed: u64,
}

/// Encodes one scrape's client samples.
#[derive(Debug)]
struct ClientCollector {
    clients: Vec<ClientSample>,
    states: Vec<&'static str>,
}

impl Collector for ClientCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        // One series per client, for the state it is in: seven one-hot series per client
        // would be most of a host's series in Prometheus.
        let mut family = encoder.encode_descriptor(
            "client_state",
            "1 for the state each client is in (no series for the states it is not in)",
            None,
            MetricType::Gauge,
        )?;
        for c in &self.clients {
            let labels = StateLabels {
                client: c.client.clone(),
                state: c.state,
            };
            ConstGauge::new(1i64).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "clients",
            "Configured clients in each state",
            None,
            MetricType::Gauge,
        )?;
        for &state in &self.states {
            let n = self.clients.iter().filter(|c| c.state == state).count();
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            ConstGauge::new(n).encode(family.encode_family(&StateOnly { state })?)?;
        }
        let mut family = encoder.encode_descriptor(
            "token_expiry_timestamp_seconds",
            "When the client's current token expires (Unix time)",
            None,
            MetricType::Gauge,
        )?;
        for c in &self.clients {
            if let Some(at) = c.expires_unix {
                let labels = ClientLabel {
                    client: c.client.clone(),
                };
                ConstGauge::new(at).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "token_refreshes",
            "Token requests by result",
            None,
            MetricType::Counter,
        )?;
        for c in &self.clients {
            for (result, n) in [("success", c.succeeded), ("failure", c.failed)] {
                let labels = RefreshLabels {
                    client: c.client.clone(),
                    result,
                };
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// One proxy route's request counters by status class and its upstream latency.
pub struct RouteMetrics {
    answered: [Counter; 5],
    upstream: Histogram,
}

impl RouteMetrics {
    /// The route answered its caller with `status`.
    pub fn answered(&self, status: u16) {
        let class = usize::from(status.clamp(100, 599) / 100 - 1);
        self.answered[class].inc();
    }

    pub fn upstream_took(&self, took: Duration) {
        self.upstream.observe(took.as_secs_f64());
    }
}

/// Counts an open WatchToken stream for as long as it lives.
pub struct WatchGuard;

impl WatchGuard {
    pub fn open() -> WatchGuard {
        METRICS.watch_streams.inc();
        WatchGuard
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        METRICS.watch_streams.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_calls_are_counted_by_method_and_code() {
        let metrics = Metrics::new();
        metrics.grpc("GetToken", tonic::Code::Ok);
        metrics.grpc("GetToken", tonic::Code::Ok);
        metrics.grpc("GetToken", tonic::Code::NotFound);
        metrics.grpc("ListClients", tonic::Code::Unauthenticated);
        metrics.grpc("Unlisted", tonic::Code::Ok);
        let text = metrics.encode(Vec::new(), &[]);
        for line in [
            r#"tokend_grpc_requests_total{method="GetToken",code="Ok"} 2"#,
            r#"tokend_grpc_requests_total{method="GetToken",code="NotFound"} 1"#,
            r#"tokend_grpc_requests_total{method="ListClients",code="Unauthenticated"} 1"#,
            r#"tokend_grpc_requests_total{method="Unlisted",code="Ok"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from:\n{text}"
            );
        }
        assert_eq!(text.matches("tokend_grpc_requests_total{").count(), 4);
    }

    fn sample(client: &str, state: &'static str, expires_unix: Option<f64>) -> ClientSample {
        ClientSample {
            client: client.into(),
            state,
            expires_unix,
            succeeded: 3,
            failed: 1,
        }
    }

    #[test]
    fn each_client_has_its_state_expiry_and_requests_and_the_totals_count_every_state() {
        let metrics = Metrics::new();
        let clients = vec![
            sample("a", "fresh", Some(1_700_000_000.5)),
            sample("b", "starting", None),
        ];
        let text = metrics.encode(clients, &["starting", "fresh", "failed"]);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("tokend_client") || l.starts_with("tokend_token_"))
            .collect();
        let expected = [
            r#"tokend_client_state{client="a",state="fresh"} 1"#,
            r#"tokend_client_state{client="b",state="starting"} 1"#,
            r#"tokend_clients{state="starting"} 1"#,
            r#"tokend_clients{state="fresh"} 1"#,
            r#"tokend_clients{state="failed"} 0"#,
            r#"tokend_token_expiry_timestamp_seconds{client="a"} 1700000000.5"#,
            r#"tokend_token_refreshes_total{client="a",result="success"} 3"#,
            r#"tokend_token_refreshes_total{client="a",result="failure"} 1"#,
            r#"tokend_token_refreshes_total{client="b",result="success"} 3"#,
            r#"tokend_token_refreshes_total{client="b",result="failure"} 1"#,
        ];
        assert_eq!(lines, expected, "{text}");
        // One exposition: the registry's metrics and the clients' end with a single EOF.
        assert_eq!(text.matches("# EOF").count(), 1, "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("tokend_build_info"), "{text}");
    }
}
