//! Callers allowed by their Kubernetes pod, end to end: real processes (`tokend get`) moved into
//! pod-shaped cgroups of the test's making (the systemd driver's
//! `kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid>.slice/cri-containerd-<id>.scope`,
//! below a slice of the test's own), the real tokend daemon, the real oidc-provider, and a fake
//! kubelet: HTTPS on 127.0.0.1 with a CA and certificate made by the `openssl` command, checking
//! the bearer token, serving a pod list the test changes, counting requests.
//!
//! The fake kubelet runs on a runtime and thread of its own, so that the test may block on
//! `tokend get` while tokend asks the kubelet.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use common::cgroups::{Cgroup, get_in};
use common::{Daemon, OidcServer, eventually, openssl, secret_file};

const SECRET: &str = "pods-secret";
/// The ServiceAccount token tokend shows the kubelet.
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.kubelet-sa-token-7f3a9c.c2lnbmF0dXJl";
/// `refresh_interval` in the config.
const INTERVAL: Duration = Duration::from_secs(1);
/// How long a state change may take to be seen: a few intervals, on a loaded machine.
const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Background tasks: a runtime on a thread of its own, stopped (its tasks dropped) on drop.

struct Background {
    handle: tokio::runtime::Handle,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn new() -> Background {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            handle_tx.send(rt.handle().clone()).unwrap();
            rt.block_on(async {
                let _ = stopped.await;
            });
        });
        Background {
            handle: handle_rx.recv().unwrap(),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.thread.take().unwrap().join();
    }
}

// ---------------------------------------------------------------------------------------------
// Certificates.

/// A CA (`ca.pem`) and from it a kubelet serving certificate for 127.0.0.1 (`kubelet.pem`).
fn pki() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=tokend pods test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(d, &ca);
    std::fs::write(
        d.join("kubelet.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let mut csr = vec!["req", "-new"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "kubelet.key",
        "-out",
        "kubelet.csr",
        "-subj",
        "/CN=node-1",
    ]);
    openssl(d, &csr);
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "kubelet.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "kubelet.pem",
            "-days",
            "2",
            "-extfile",
            "kubelet.ext",
        ],
    );
    dir
}

// ---------------------------------------------------------------------------------------------
// The fake kubelet.

#[derive(Default)]
struct KubeletState {
    /// The pod list's `items`.
    pods: Mutex<Vec<serde_json::Value>>,
    /// When set, `/pods` answers a redirect here instead of the list.
    redirect: Mutex<Option<String>>,
    /// Every request: its path and its Authorization header ("" without one).
    seen: Mutex<Vec<(String, String)>>,
    requests: AtomicUsize,
}

struct FakeKubelet {
    state: Arc<KubeletState>,
    url: String,
}

impl FakeKubelet {
    /// A kubelet on 127.0.0.1 with `pki`'s certificate, accepting only `Bearer TOKEN`.
    fn start(background: &Background, pki: &Path) -> FakeKubelet {
        let chain = CertificateDer::pem_file_iter(pki.join("kubelet.pem"))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(pki.join("kubelet.key")).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let url = format!("https://{}", tcp.local_addr().unwrap());
        let state = Arc::new(KubeletState::default());
        let app = axum::Router::new()
            .fallback(kubelet_answer)
            .with_state(state.clone());
        let tls = TlsAcceptor::from(Arc::new(config));
        background.handle.spawn(async move {
            let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
            axum::serve(Tls { tcp, tls }, app).await.unwrap();
        });
        FakeKubelet { state, url }
    }

    fn set_pods(&self, pods: &[serde_json::Value]) {
        *self.state.pods.lock().unwrap() = pods.to_vec();
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<(String, String)> {
        self.state.seen.lock().unwrap().clone()
    }
}

async fn kubelet_answer(
    axum::extract::State(kube): axum::extract::State<Arc<KubeletState>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let auth = headers
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    kube.seen
        .lock()
        .unwrap()
        .push((uri.path().to_string(), auth.clone()));
    kube.requests.fetch_add(1, Ordering::SeqCst);
    if auth != format!("Bearer {TOKEN}") {
        return (StatusCode::UNAUTHORIZED, "Unauthorized").into_response();
    }
    if uri.path() != "/pods" {
        return StatusCode::NOT_FOUND.into_response();
    }
    if let Some(to) = kube.redirect.lock().unwrap().clone() {
        return (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response();
    }
    let items = kube.pods.lock().unwrap().clone();
    let list =
        serde_json::json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items});
    (
        [(header::CONTENT_TYPE, "application/json")],
        list.to_string(),
    )
        .into_response()
}

/// TCP with the TLS handshake done before the connection is served; a failed handshake is
/// skipped.
struct Tls {
    tcp: tokio::net::TcpListener,
    tls: TlsAcceptor,
}

impl axum::serve::Listener for Tls {
    type Io = TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            let handshake = tokio::time::timeout(Duration::from_secs(5), self.tls.accept(tcp));
            if let Ok(Ok(tls)) = handshake.await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// A TCP listener on 127.0.0.1 that keeps every byte sent to it and, when `upstream` is given,
/// forwards both ways (a tap on tokend's traffic to the OAuth server); without, it answers
/// nothing (a proxy tokend must never use).
struct Tap {
    port: u16,
    bytes: Arc<Mutex<Vec<u8>>>,
    connections: Arc<AtomicUsize>,
}

impl Tap {
    fn start(background: &Background, upstream: Option<u16>) -> Tap {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        tcp.set_nonblocking(true).unwrap();
        let port = tcp.local_addr().unwrap().port();
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let (kept, count) = (bytes.clone(), connections.clone());
        background.handle.spawn(async move {
            let tcp = tokio::net::TcpListener::from_std(tcp).unwrap();
            while let Ok((mut conn, _)) = tcp.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut up = match upstream {
                        Some(p) => Some(
                            tokio::net::TcpStream::connect(("127.0.0.1", p))
                                .await
                                .unwrap(),
                        ),
                        None => None,
                    };
                    let (mut from_tokend, mut to_tokend) = conn.split();
                    let (mut from_up, mut to_up) = match &mut up {
                        Some(up) => {
                            let (r, w) = up.split();
                            (Some(r), Some(w))
                        }
                        None => (None, None),
                    };
                    let forward = async {
                        let mut buf = vec![0; 16 * 1024];
                        loop {
                            let n = match from_tokend.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            kept.lock().unwrap().extend_from_slice(&buf[..n]);
                            if let Some(w) = &mut to_up
                                && w.write_all(&buf[..n]).await.is_err()
                            {
                                break;
                            }
                        }
                        if let Some(w) = &mut to_up {
                            let _ = w.shutdown().await;
                        }
                    };
                    let back = async {
                        if let Some(r) = &mut from_up {
                            let _ = tokio::io::copy(r, &mut to_tokend).await;
                            let _ = to_tokend.shutdown().await;
                        }
                    };
                    tokio::join!(forward, back);
                });
            }
        });
        Tap {
            port,
            bytes,
            connections,
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Pods: a UID, a container ID, and the cgroup the container's processes are in.

struct TestPod {
    uid: String,
    container: String,
    cgroup: Cgroup,
}

impl TestPod {
    /// A pod of a fresh UID and container ID, its container's cgroup made as the kubelet (with
    /// the systemd driver) and containerd make it, below a slice of the test's own.
    fn new() -> TestPod {
        static N: AtomicU32 = AtomicU32::new(0);
        let seed = format!(
            "{}-{}-{:?}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
        );
        let h = sha256_hex(seed.as_bytes());
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        );
        let container = sha256_hex(uid.as_bytes());
        let cgroup = Cgroup::new(
            &format!("tokend-pods-test-{}.slice", std::process::id()),
            &format!(
                "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container}.scope",
                uid.replace('-', "_")
            ),
        );
        TestPod {
            uid,
            container,
            cgroup,
        }
    }

    /// This pod as the kubelet's `/pods` lists it.
    fn listed(
        &self,
        namespace: &str,
        name: &str,
        service_account: &str,
        labels: &[(&str, &str)],
    ) -> serde_json::Value {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        serde_json::json!({
            "metadata": {
                "name": name, "namespace": namespace, "uid": self.uid,
                "labels": labels,
                "annotations": {"kubernetes.io/config.source": "api"}
            },
            "spec": {
                "serviceAccountName": service_account, "serviceAccount": service_account,
                "nodeName": "node-1",
                "containers": [{"name": "app", "image": "registry.example/app:1.0"}]
            },
            "status": {
                "phase": "Running", "qosClass": "BestEffort",
                "containerStatuses": [{
                    "name": "app", "ready": true, "restartCount": 0,
                    "state": {"running": {"startedAt": "2026-11-30T09:12:50Z"}},
                    "image": "registry.example/app:1.0",
                    "containerID": format!("containerd://{}", self.container)
                }]
            }
        })
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The daemon and its callers.

struct Setup {
    idp: OidcServer,
    pki: tempfile::TempDir,
    kubelet: FakeKubelet,
    daemon: Daemon,
    oauth_tap: Option<Tap>,
    background: Background,
}

/// How the daemon is set up beyond the defaults.
#[derive(Default)]
struct Options<'a> {
    /// What the token file holds.
    token: Option<&'a str>,
    /// tokend reaches the OAuth server through a [`Tap`] (`Setup::oauth_tap`).
    tap_oauth: bool,
    env: &'a [(&'a str, &'a str)],
}

/// The real oidc-provider, a fake kubelet listing `pods`, and tokend with two clients: `billing`
/// for pods of namespace billing and ServiceAccount billing-api, `audit` for pods labelled
/// app=audit.
async fn setup(background: Background, pods: &[serde_json::Value], o: Options<'_>) -> Setup {
    let idp = OidcServer::start(serde_json::json!({
        "clients": [
            {"client_id": "pods-client", "client_secret": SECRET,
             "token_endpoint_auth_method": "client_secret_basic",
             "grant_types": ["client_credentials"], "scope": "api:read"}
        ]
    }));
    let pki = pki();
    let kubelet = FakeKubelet::start(&background, pki.path());
    kubelet.set_pods(pods);
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "c.secret", SECRET);
    secret_file(dir.path(), "kubelet.token", o.token.unwrap_or(TOKEN));
    let mut token_endpoint = url::Url::parse(&idp.token_endpoint).unwrap();
    let oauth_tap = o
        .tap_oauth
        .then(|| Tap::start(&background, token_endpoint.port()));
    if let Some(tap) = &oauth_tap {
        token_endpoint.set_port(Some(tap.port)).unwrap();
    }
    let client = |name: &str, allow: &str| {
        format!(
            "[clients.{name}]\ntoken_endpoint = \"{token_endpoint}\"\nclient_id = \"pods-client\"\nclient_secret_file = \"{{dir}}/c.secret\"\nscope = \"api:read\"\n[[clients.{name}.allow]]\n{allow}\n"
        )
    };
    let config = format!(
        "[kubernetes]\nkubelet_url = \"{}\"\ntoken_file = \"{{dir}}/kubelet.token\"\nca_file = \"{}\"\nrefresh_interval = \"1s\"\n\n{}{}",
        kubelet.url,
        pki.path().join("ca.pem").display(),
        client(
            "billing",
            "pod_namespace = \"billing\"\npod_service_account = \"billing-api\""
        ),
        client("audit", "pod_label = \"app=audit\""),
    );
    let daemon = Daemon::start_in_with_env(dir, &config, o.env).await;
    Setup {
        idp,
        pki,
        kubelet,
        daemon,
        oauth_tap,
        background,
    }
}

/// Runs `tokend get CLIENT` (a new connection), first moved into `pod`'s cgroup if given: the
/// exit code and the output.
fn get(setup: &Setup, pod: Option<&TestPod>, client: &str) -> (i32, String) {
    let tokend = Path::new(env!("CARGO_BIN_EXE_tokend"));
    get_in(pod.map(|p| &p.cgroup), tokend, &setup.daemon.socket, client)
}

#[track_caller]
fn assert_gets(setup: &Setup, pod: Option<&TestPod>, client: &str, what: &str) -> String {
    let (code, out) = get(setup, pod, client);
    assert_eq!(code, 0, "{what}: {out}");
    out
}

#[track_caller]
fn assert_refused(setup: &Setup, pod: Option<&TestPod>, client: &str, what: &str) {
    let (code, out) = get(setup, pod, client);
    assert_ne!(code, 0, "{what}: {out}");
    assert!(
        out.contains(&format!("no client named \"{client}\"")),
        "{what}: refused as a client it may not see (NOT_FOUND): {out}"
    );
}

/// Waits until tokend has fetched the pod list anew: a caller from `unlisted` (a pod the kubelet
/// does not list) misses, which fetches once the interval has passed. Each try is a refused
/// call; the fetch is over when it returns.
async fn refetch(setup: &Setup, unlisted: &TestPod) {
    let before = setup.kubelet.requests();
    eventually(WAIT, "tokend to fetch the pod list again", || {
        let (code, out) = get(setup, Some(unlisted), "billing");
        assert_ne!(code, 0, "a pod the kubelet does not list: {out}");
        let fetched = setup.kubelet.requests() > before;
        async move { fetched.then_some(()) }
    })
    .await;
}

/// Fetches the kubelet may have had between `start` and now: no two within an interval.
fn fetch_bound(start: Instant) -> usize {
    (start.elapsed().as_secs_f64() / INTERVAL.as_secs_f64()).floor() as usize + 1
}

// ---------------------------------------------------------------------------------------------

/// A pod of namespace billing and ServiceAccount billing-api gets the billing client's token;
/// one of another namespace, one of another ServiceAccount, and a caller in no pod are refused.
#[tokio::test]
async fn pods_are_allowed_by_namespace_and_service_account() {
    let (a, b, d) = (TestPod::new(), TestPod::new(), TestPod::new());
    let s = setup(
        Background::new(),
        &[
            a.listed(
                "billing",
                "billing-api-5d8f7-abcde",
                "billing-api",
                &[("app", "billing")],
            ),
            b.listed(
                "ops",
                "billing-api-77c4-fghij",
                "billing-api",
                &[("app", "billing")],
            ),
            d.listed(
                "billing",
                "cron-1234-klmno",
                "default",
                &[("app", "billing")],
            ),
        ],
        Options::default(),
    )
    .await;

    let out = assert_gets(&s, Some(&a), "billing", "pod A (billing, billing-api)");
    assert!(!s.idp.issued_to("pods-client").await.is_empty(), "{out}");
    assert_refused(&s, Some(&b), "billing", "pod B (namespace ops)");
    assert_refused(&s, Some(&d), "billing", "pod D (ServiceAccount default)");
    assert_refused(&s, None, "billing", "a caller in no pod");
    // Pod A is not labelled app=audit.
    assert_refused(&s, Some(&a), "audit", "pod A for the audit client");

    // The log names the pod found, whether it matched or not.
    let log = s.daemon.log_text();
    assert!(
        log.lines().any(|l| l.contains("token handed out")
            && l.contains("client=billing")
            && l.contains("rule=allow[0]")
            && l.contains("pod billing/billing-api-5d8f7-abcde")),
        "{log}"
    );
    assert!(
        log.lines().any(|l| l.contains("denied")
            && l.contains("client=billing")
            && l.contains("pod ops/billing-api-77c4-fghij")),
        "{log}"
    );
}

/// A pod the kubelet does not list yet is refused, and found once listed (after the interval);
/// misses within the interval ask the kubelet nothing.
#[tokio::test]
async fn a_pod_that_appears_is_found_and_misses_fetch_at_most_once_per_interval() {
    let (a, c) = (TestPod::new(), TestPod::new());
    let s = setup(
        Background::new(),
        &[a.listed("billing", "billing-api-0", "billing-api", &[])],
        Options::default(),
    )
    .await;
    assert_eq!(
        s.kubelet.requests(),
        0,
        "nothing is asked before a caller is"
    );

    let start = Instant::now();
    for i in 0..20 {
        assert_refused(
            &s,
            Some(&c),
            "billing",
            &format!("unlisted pod C, call {i}"),
        );
    }
    let fetches = s.kubelet.requests();
    let bound = fetch_bound(start);
    assert!(fetches >= 1, "the first miss fetches the list");
    assert!(
        fetches <= bound,
        "20 misses fetched {fetches} times in {:?}: more than once per {INTERVAL:?} (at most {bound})",
        start.elapsed()
    );

    let start = Instant::now();
    let before = s.kubelet.requests();
    s.kubelet.set_pods(&[
        a.listed("billing", "billing-api-0", "billing-api", &[]),
        c.listed("billing", "billing-api-1", "billing-api", &[]),
    ]);
    eventually(WAIT, "pod C to get the billing token once listed", || {
        let (code, _) = get(&s, Some(&c), "billing");
        async move { (code == 0).then_some(()) }
    })
    .await;
    let fetches = s.kubelet.requests() - before;
    let bound = fetch_bound(start);
    assert!(
        (1..=bound).contains(&fetches),
        "{fetches} fetches while waiting {:?} for C (at most {bound})",
        start.elapsed()
    );
    // Found, C is a hit: no more fetches, however many calls.
    let before = s.kubelet.requests();
    for _ in 0..5 {
        assert_gets(&s, Some(&c), "billing", "pod C, listed");
    }
    assert_gets(&s, Some(&a), "billing", "pod A");
    assert_eq!(s.kubelet.requests(), before, "hits ask the kubelet nothing");
}

/// A pod the kubelet no longer lists is refused to new connections once the list has been
/// fetched again.
#[tokio::test]
async fn a_pod_that_disappears_is_refused_after_the_next_fetch() {
    let (c, unlisted) = (TestPod::new(), TestPod::new());
    let s = setup(
        Background::new(),
        &[c.listed("billing", "billing-api-0", "billing-api", &[])],
        Options::default(),
    )
    .await;
    assert_gets(&s, Some(&c), "billing", "pod C, listed");

    s.kubelet.set_pods(&[]);
    refetch(&s, &unlisted).await;
    assert_refused(&s, Some(&c), "billing", "pod C, gone from the list");
    let log = s.daemon.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("denied") && l.contains("client=billing")),
        "{log}"
    );
}

/// A label selector follows the pod's labels as of the last fetch. A pod found in the cached
/// list is never fetched again by itself: the list (with the pod's new labels) is fetched only
/// when some caller's pod is missing from it, so the test makes such a miss.
#[tokio::test]
async fn a_label_selector_follows_the_pods_labels() {
    let (l, unlisted) = (TestPod::new(), TestPod::new());
    let labelled = |app: &str| l.listed("ops", "audit-7d9-pqrst", "auditor", &[("app", app)]);
    let s = setup(Background::new(), &[labelled("audit")], Options::default()).await;
    assert_gets(&s, Some(&l), "audit", "a pod labelled app=audit");
    assert_refused(&s, Some(&l), "billing", "the audit pod for billing");

    s.kubelet.set_pods(&[labelled("other")]);
    refetch(&s, &unlisted).await;
    assert_refused(&s, Some(&l), "audit", "the pod relabelled app=other");

    // And back: the same pod, relabelled app=audit, is allowed again.
    s.kubelet.set_pods(&[labelled("audit")]);
    refetch(&s, &unlisted).await;
    assert_gets(&s, Some(&l), "audit", "the pod labelled app=audit again");
}

/// The kubelet refusing tokend's token fails closed, and the log says why (once per fetch,
/// not once per caller); the token file is read afresh, so fixing it is enough.
#[tokio::test]
async fn a_kubelet_that_refuses_tokend_fails_closed_and_the_log_says_why() {
    let a = TestPod::new();
    let s = setup(
        Background::new(),
        &[a.listed(
            "billing",
            "billing-api-0",
            "billing-api",
            &[("app", "audit")],
        )],
        Options {
            token: Some("a-stale-token"),
            ..Options::default()
        },
    )
    .await;

    let start = Instant::now();
    for i in 0..10 {
        assert_refused(
            &s,
            Some(&a),
            "billing",
            &format!("call {i}, kubelet says 401"),
        );
    }
    assert_refused(&s, Some(&a), "audit", "the audit client, kubelet says 401");
    let bound = fetch_bound(start);
    let fetches = s.kubelet.requests();
    assert!(
        (1..=bound).contains(&fetches),
        "{fetches} fetches (at most {bound})"
    );
    assert!(
        s.kubelet
            .seen()
            .iter()
            .all(|(path, auth)| path == "/pods" && auth == "Bearer a-stale-token"),
        "{:?}",
        s.kubelet.seen()
    );
    let log = s.daemon.log_text();
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot list the kubelet's pods"))
        .collect();
    assert_eq!(
        why.len(),
        fetches,
        "one line per failed fetch, not per caller:\n{log}"
    );
    assert!(
        why[0].contains(&format!(
            "the kubelet at {}/pods answered HTTP 401",
            s.kubelet.url
        )) && why[0].contains("did not accept tokend's token"),
        "{}",
        why[0]
    );

    // The token file is read for each request: a good token is enough, once the interval is
    // over.
    secret_file(s.daemon.dir.path(), "kubelet.token", TOKEN);
    eventually(
        WAIT,
        "the billing token once the kubelet accepts tokend",
        || {
            let (code, _) = get(&s, Some(&a), "billing");
            async move { (code == 0).then_some(()) }
        },
    )
    .await;
    assert!(
        s.daemon
            .log_text()
            .contains("the kubelet's pod list is readable again"),
        "{}",
        s.daemon.log_text()
    );
}

/// The bearer token goes to the kubelet and nowhere else: not to the OAuth server (its traffic
/// is tapped), not through a proxy from the environment, not after a redirect the kubelet
/// answers, not to callers, not to the log.
#[tokio::test]
async fn the_bearer_token_goes_only_to_the_kubelet() {
    let background = Background::new();
    let (a, unlisted) = (TestPod::new(), TestPod::new());
    // A proxy in the environment that tokend must not use for the kubelet (the OAuth server is
    // plain http on loopback, which these do not cover).
    let proxy = Tap::start(&background, None);
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let env = [
        ("HTTPS_PROXY", proxy_url.as_str()),
        ("https_proxy", proxy_url.as_str()),
    ];
    let s = setup(
        background,
        &[a.listed("billing", "billing-api-0", "billing-api", &[])],
        Options {
            tap_oauth: true,
            env: &env,
            ..Options::default()
        },
    )
    .await;
    let tap = s.oauth_tap.as_ref().unwrap();
    let (code, out) = get(&s, Some(&a), "billing");
    assert_eq!(
        proxy.connections.load(Ordering::SeqCst),
        0,
        "the kubelet was asked through the proxy in HTTPS_PROXY"
    );
    assert_eq!(code, 0, "pod A: {out}");
    assert!(
        !out.contains(TOKEN),
        "a caller is given the kubelet's token: {out}"
    );
    assert!(
        tap.text().contains("grant_type=client_credentials"),
        "the tap sees tokend's token requests: {}",
        tap.text()
    );
    assert!(
        !tap.text().contains(TOKEN),
        "sent to the OAuth server: {}",
        tap.text()
    );
    assert_eq!(
        s.kubelet.seen(),
        vec![("/pods".to_string(), format!("Bearer {TOKEN}"))],
        "the kubelet is asked for /pods with the token"
    );

    // A kubelet redirecting elsewhere (to a second kubelet, of the same CA, accepting the
    // token): not followed.
    let thief = FakeKubelet::start(&s.background, s.pki.path());
    thief.set_pods(&[a.listed("billing", "billing-api-0", "billing-api", &[])]);
    *s.kubelet.state.redirect.lock().unwrap() = Some(format!("{}/pods", thief.url));
    refetch(&s, &unlisted).await;
    assert_eq!(
        thief.requests(),
        0,
        "the redirect was followed: {:?}",
        thief.seen()
    );
    let log = s.daemon.log_text();
    assert!(
        log.contains(&format!(
            "the kubelet at {}/pods answered HTTP 307",
            s.kubelet.url
        )),
        "{log}"
    );
    assert_eq!(proxy.connections.load(Ordering::SeqCst), 0);

    assert!(!log.contains(TOKEN), "the token is in tokend's log:\n{log}");
    assert!(
        !log.contains("kubelet-sa-token"),
        "part of the token is in tokend's log:\n{log}"
    );
}
