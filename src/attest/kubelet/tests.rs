//! [`Kubelet`] against a fake kubelet: HTTPS on loopback with certificates made for the test
//! (by the `openssl` command, as `tests/mtls.rs` makes its own), checking the bearer token,
//! counting requests, and serving a pod list the test changes.
//!
//! Time runs on the real clock here (auto-advancing a paused clock while real sockets wait
//! would fire reqwest's timeouts); the interval rules are tested on the paused clock in
//! `cache.rs`, and here only with intervals no test can outlast (zero or an hour).

use crate::test_tools::openssl;
use std::convert::Infallible;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::*;

const HOUR: Duration = Duration::from_secs(3600);
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.first-token-body.sig";

/// Two CAs, and from the first a certificate for 127.0.0.1 (`ip.pem`) and one for the node's
/// name only (`node.pem`), as a kubelet's serving certificate usually is.
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
    for ca in ["ca", "other-ca"] {
        let (key, pem, subj) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN=tokend test {ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend([
            "-keyout",
            &key,
            "-out",
            &pem,
            "-days",
            "2",
            "-subj",
            &subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &args);
    }
    for (name, san) in [("ip", "IP:127.0.0.1"), ("node", "DNS:node-1.cluster.test")] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        std::fs::write(
            d.join(&ext),
            format!(
                "basicConstraints=CA:FALSE\nsubjectAltName={san}\nextendedKeyUsage=serverAuth\n"
            ),
        )
        .unwrap();
        let mut args = vec!["req", "-new"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=kubelet"]);
        openssl(d, &args);
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
    dir
}

/// What the fake kubelet answers `GET /pods` with.
#[derive(Clone)]
enum Answer {
    Pods(String),
    Status(StatusCode),
    /// `len` bytes, streamed without a length (as a kubelet's chunked answer).
    Streamed {
        len: usize,
    },
    /// `len` bytes, announced in Content-Length.
    Sized {
        len: usize,
    },
}

struct Kube {
    answer: Mutex<Answer>,
    /// The token it accepts.
    token: Mutex<String>,
    /// Every bearer token it was sent, in order.
    seen: Mutex<Vec<String>>,
    requests: AtomicUsize,
}

struct FakeKubelet {
    state: Arc<Kube>,
    url: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl FakeKubelet {
    /// A kubelet on 127.0.0.1 presenting `cert` (`ip` or `node` of [`pki`]).
    async fn start(dir: &Path, cert: &str) -> FakeKubelet {
        let chain = CertificateDer::pem_file_iter(dir.join(format!("{cert}.pem")))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(dir.join(format!("{cert}.key"))).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("https://{}", tcp.local_addr().unwrap());
        let state = Arc::new(Kube {
            answer: Mutex::new(Answer::Pods(pod_list(&[]))),
            token: Mutex::new(TOKEN.into()),
            seen: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
        });
        let app = axum::Router::new()
            .route("/pods", axum::routing::get(pods))
            .with_state(state.clone());
        let listener = Tls {
            tcp,
            tls: TlsAcceptor::from(Arc::new(config)),
        };
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeKubelet { state, url, server }
    }

    fn serve(&self, answer: Answer) {
        *self.state.answer.lock().unwrap() = answer;
    }

    fn serve_pods(&self, pods: &[(&str, u8)]) {
        self.serve(Answer::Pods(pod_list(pods)));
    }

    fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<String> {
        self.state.seen.lock().unwrap().clone()
    }
}

/// The fake's listener: TCP with the TLS handshake done before the connection is served (one at
/// a time, which is all a test needs; a failed handshake is a client's refusal, and skipped).
struct Tls {
    tcp: TcpListener,
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

/// A real kubelet's refusal, which tokend must not repeat.
const DENIED: &str = "Forbidden (user=system:serviceaccount:tokend:tokend, verb=get, \
                      resource=nodes, subresource(s)=[proxy])";

async fn pods(State(kube): State<Arc<Kube>>, headers: HeaderMap) -> Response {
    kube.requests.fetch_add(1, Ordering::SeqCst);
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    kube.seen.lock().unwrap().push(token.clone());
    if token != *kube.token.lock().unwrap() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let answer = kube.answer.lock().unwrap().clone();
    match answer {
        Answer::Pods(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Answer::Status(status) => (status, DENIED).into_response(),
        Answer::Streamed { len } => {
            const CHUNK: usize = 1 << 20;
            let chunk = move |i: usize| Bytes::from(vec![b' '; CHUNK.min(len - i * CHUNK)]);
            let chunks = (0..len.div_ceil(CHUNK)).map(move |i| Ok::<_, Infallible>(chunk(i)));
            Body::from_stream(futures::stream::iter(chunks)).into_response()
        }
        Answer::Sized { len } => vec![b' '; len].into_response(),
    }
}

/// A pod list with one pod per `(uid, container)`: container `c` has the ID `cc` repeated.
fn pod_list(pods: &[(&str, u8)]) -> String {
    let items: Vec<String> = pods
        .iter()
        .map(|(uid, c)| {
            format!(
                r#"{{"metadata":{{"uid":"{uid}","name":"pod-{uid}","namespace":"ns","labels":{{"app":"{uid}"}}}},"spec":{{"serviceAccountName":"sa-{uid}"}},"status":{{"containerStatuses":[{{"containerID":"containerd://{}"}}]}}}}"#,
                container(*c)
            )
        })
        .collect();
    format!(
        r#"{{"kind":"PodList","apiVersion":"v1","items":[{}]}}"#,
        items.join(",")
    )
}

fn container(c: u8) -> String {
    format!("{c:02x}").repeat(32)
}

/// A ServiceAccount token file as tokend may read it (mode 0600, ours).
struct TokenFile {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl TokenFile {
    fn new() -> TokenFile {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let file = TokenFile { _dir: dir, path };
        file.write(TOKEN);
        file
    }

    /// Replaced whole, as the kubelet rotates a projected token.
    fn write(&self, token: &str) {
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{token}\n")).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::rename(&tmp, &self.path).unwrap();
    }
}

fn settings(
    pki: &Path,
    kube: &FakeKubelet,
    token: &TokenFile,
    refresh_interval: Duration,
) -> Settings {
    Settings {
        kubelet_url: kube.url.clone(),
        token_file: token.path.clone(),
        ca_file: pki.join("ca.pem"),
        tls_server_name: None,
        refresh_interval,
        timeout: Duration::from_secs(10),
    }
}

#[tokio::test]
async fn a_pod_is_found_by_container_and_by_uid() {
    let pki = pki();
    let (kube, token) = (FakeKubelet::start(pki.path(), "ip").await, TokenFile::new());
    kube.serve_pods(&[("uid-a", 1), ("uid-b", 2)]);
    let kubelet = Kubelet::new(&settings(pki.path(), &kube, &token, HOUR)).unwrap();
    let pod = kubelet
        .pod(None, Some(&container(1)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pod.uid, "uid-a");
    assert_eq!(pod.namespace, "ns");
    assert_eq!(pod.name, "pod-uid-a");
    assert_eq!(pod.service_account, "sa-uid-a");
    assert_eq!(pod.labels["app"], "uid-a");
    let by_uid = kubelet.pod(Some("uid-b"), None).await.unwrap().unwrap();
    assert_eq!(by_uid.container_ids, vec![container(2)]);
    assert_eq!(kube.requests(), 1, "the second answer came from the cache");
    assert_eq!(kube.seen(), vec![TOKEN.to_string()]);
}

#[tokio::test]
async fn pods_appear_and_disappear_with_the_next_list() {
    let pki = pki();
    let (kube, token) = (FakeKubelet::start(pki.path(), "ip").await, TokenFile::new());
    kube.serve_pods(&[("uid-a", 1)]);
    // A zero interval: every miss may fetch, so the list's changes show at once.
    let kubelet = Kubelet::new(&settings(pki.path(), &kube, &token, Duration::ZERO)).unwrap();
    assert!(kubelet.pod(Some("uid-a"), None).await.unwrap().is_some());
    assert!(kubelet.pod(Some("uid-b"), None).await.unwrap().is_none());
    assert_eq!(kube.requests(), 2);
    kube.serve_pods(&[("uid-a", 1), ("uid-b", 2)]);
    let b = kubelet
        .pod(None, Some(&container(2)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.uid, "uid-b");
    assert_eq!(kube.requests(), 3);
    // "a" is gone from the kubelet; a miss for another pod brings the list without it.
    kube.serve_pods(&[("uid-b", 2)]);
    assert!(kubelet.pod(Some("uid-c"), None).await.unwrap().is_none());
    assert_eq!(kube.requests(), 4);
    let requests = kube.requests();
    assert!(
        kubelet
            .pod(None, Some(&container(2)))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(kube.requests(), requests, "a hit asks nothing");
    assert!(kubelet.pod(Some("uid-a"), None).await.unwrap().is_none());
    assert_eq!(kube.requests(), requests + 1);
}

#[tokio::test]
async fn concurrent_misses_make_one_request_and_later_misses_none() {
    let pki = pki();
    let (kube, token) = (FakeKubelet::start(pki.path(), "ip").await, TokenFile::new());
    kube.serve_pods(&[("uid-a", 1)]);
    let kubelet = Arc::new(Kubelet::new(&settings(pki.path(), &kube, &token, HOUR)).unwrap());
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let kubelet = kubelet.clone();
            tokio::spawn(async move {
                let uid = format!("uid-{}", if i == 0 { "a".into() } else { i.to_string() });
                kubelet.pod(Some(&uid), None).await
            })
        })
        .collect();
    let mut found = 0;
    for call in calls {
        found += usize::from(call.await.unwrap().unwrap().is_some());
    }
    assert_eq!(kube.requests(), 1);
    assert_eq!(found, 1);
    // Within the interval, misses answer from the cache, even for a pod the kubelet has now.
    kube.serve_pods(&[("uid-a", 1), ("uid-new", 9)]);
    for _ in 0..20 {
        assert!(kubelet.pod(Some("uid-new"), None).await.unwrap().is_none());
    }
    assert_eq!(kube.requests(), 1);
}

#[tokio::test]
async fn the_token_is_read_for_each_request() {
    let pki = pki();
    let (kube, token) = (FakeKubelet::start(pki.path(), "ip").await, TokenFile::new());
    kube.serve_pods(&[("uid-a", 1)]);
    let kubelet = Kubelet::new(&settings(pki.path(), &kube, &token, Duration::ZERO)).unwrap();
    assert!(kubelet.pod(Some("uid-a"), None).await.unwrap().is_some());
    let rotated = "eyJhbGciOiJSUzI1NiJ9.second-token-body.sig";
    token.write(rotated);
    *kube.state.token.lock().unwrap() = rotated.into();
    assert!(kubelet.pod(Some("uid-x"), None).await.unwrap().is_none());
    assert_eq!(kube.seen(), vec![TOKEN.to_string(), rotated.to_string()]);
    // A token the kubelet refuses: the error says what to check, and never shows the token.
    token.write("eyJ.stale-token-body.sig");
    let err = kubelet.pod(Some("uid-y"), None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, KubeletError::Status { status: 401, .. }),
        "{text}"
    );
    assert!(text.contains("did not accept tokend's token"), "{text}");
    assert!(!text.contains("stale-token-body") && !format!("{err:?}").contains("stale-token-body"));
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_token_file_others_can_read_is_not_sent() {
    let pki = pki();
    let (kube, token) = (FakeKubelet::start(pki.path(), "ip").await, TokenFile::new());
    std::fs::set_permissions(&token.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let kubelet = Kubelet::new(&settings(pki.path(), &kube, &token, Duration::ZERO)).unwrap();
    let err = kubelet.pod(Some("uid-a"), None).await.unwrap_err();
    assert!(matches!(err, KubeletError::Token(_)), "{err}");
    assert!(err.to_string().contains("readable by other users"), "{err}");
    assert!(!err.to_string().contains("first-token-body"), "{err}");
    assert_eq!(kube.requests(), 0);
}

#[tokio::test]
async fn forbidden_names_the_rbac_to_grant() {
    let pki = pki();
    let (kube, token) = (FakeKubelet::start(pki.path(), "ip").await, TokenFile::new());
    kube.serve(Answer::Status(StatusCode::FORBIDDEN));
    let kubelet = Kubelet::new(&settings(pki.path(), &kube, &token, HOUR)).unwrap();
    let err = kubelet.pod(Some("uid-a"), None).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("HTTP 403") && text.contains("RBAC"), "{text}");
    assert!(
        text.contains("nodes/pods") && text.contains("nodes/proxy"),
        "{text}"
    );
    // Not the kubelet's body, nor the token.
    assert!(
        !text.contains("subresource(s)") && !text.contains(TOKEN),
        "{text}"
    );
    // Within the interval the same error answers, without asking again.
    let again = kubelet.pod(Some("uid-a"), None).await.unwrap_err();
    assert!(matches!(again, KubeletError::Status { status: 403, .. }));
    assert_eq!(kube.requests(), 1);
}

#[tokio::test]
async fn a_body_over_the_cap_is_refused() {
    let pki = pki();
    let (kube, token) = (FakeKubelet::start(pki.path(), "ip").await, TokenFile::new());
    let kubelet = Kubelet::new(&settings(pki.path(), &kube, &token, Duration::ZERO)).unwrap();
    for answer in [
        Answer::Sized {
            len: MAX_RESPONSE_BYTES + 1,
        },
        Answer::Streamed {
            len: MAX_RESPONSE_BYTES + 1,
        },
    ] {
        kube.serve(answer);
        let err = kubelet.pod(Some("uid-a"), None).await.unwrap_err();
        assert!(matches!(err, KubeletError::TooLarge { .. }), "{err}");
    }
    // At the cap exactly, the body is read (and is not JSON).
    kube.serve(Answer::Streamed {
        len: MAX_RESPONSE_BYTES,
    });
    let err = kubelet.pod(Some("uid-a"), None).await.unwrap_err();
    assert!(err.to_string().contains("is not JSON"), "{err}");
}

#[tokio::test]
async fn a_kubelet_certificate_from_another_ca_is_refused() {
    let pki = pki();
    let (kube, token) = (FakeKubelet::start(pki.path(), "ip").await, TokenFile::new());
    kube.serve_pods(&[("uid-a", 1)]);
    let mut s = settings(pki.path(), &kube, &token, Duration::ZERO);
    s.ca_file = pki.path().join("other-ca.pem");
    let kubelet = Kubelet::new(&s).unwrap();
    for _ in 0..2 {
        let err = kubelet.pod(Some("uid-a"), None).await.unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, KubeletError::Connect { .. }), "{text}");
        assert!(
            text.contains("not from a CA in") && text.contains("other-ca.pem"),
            "{text}"
        );
        assert!(!err.is_transient());
    }
    assert_eq!(kube.requests(), 0, "no request was sent, so no token");
}

#[tokio::test]
async fn a_certificate_for_the_node_name_needs_tls_server_name() {
    let pki = pki();
    let (kube, token) = (
        FakeKubelet::start(pki.path(), "node").await,
        TokenFile::new(),
    );
    kube.serve_pods(&[("uid-a", 1)]);
    let mut s = settings(pki.path(), &kube, &token, Duration::ZERO);
    let err = Kubelet::new(&s)
        .unwrap()
        .pod(Some("uid-a"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("set tls_server_name"), "{err}");
    // Another name is no better.
    s.tls_server_name = Some("node-2.cluster.test".into());
    assert!(
        Kubelet::new(&s)
            .unwrap()
            .pod(Some("uid-a"), None)
            .await
            .is_err()
    );
    assert_eq!(kube.requests(), 0);
    s.tls_server_name = Some("node-1.cluster.test".into());
    let pod = Kubelet::new(&s)
        .unwrap()
        .pod(Some("uid-a"), None)
        .await
        .unwrap();
    assert_eq!(pod.unwrap().uid, "uid-a");
    // The name replaces the host for the check; the chain must still lead to ca_file.
    s.ca_file = pki.path().join("other-ca.pem");
    let err = Kubelet::new(&s)
        .unwrap()
        .pod(Some("uid-a"), None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not from a CA in"), "{err}");
    assert_eq!(kube.requests(), 1);
}

#[tokio::test]
async fn nothing_listening_and_bad_files_are_errors_that_say_so() {
    let (pki, token) = (pki(), TokenFile::new());
    // A port just closed: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Settings {
        kubelet_url: format!("https://127.0.0.1:{port}"),
        token_file: token.path.clone(),
        ca_file: pki.path().join("ca.pem"),
        ..Settings::default()
    };
    let err = Kubelet::new(&s)
        .unwrap()
        .pod(Some("uid-a"), None)
        .await
        .unwrap_err();
    assert!(matches!(err, KubeletError::Connect { .. }), "{err}");
    assert!(err.is_transient(), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    let missing = Settings {
        ca_file: "/nonexistent/ca.crt".into(),
        ..s.clone()
    };
    let err = Kubelet::new(&missing).err().unwrap();
    assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
    let not_pem = Settings {
        ca_file: token.path.clone(),
        ..s.clone()
    };
    let err = Kubelet::new(&not_pem).err().unwrap();
    assert!(err.to_string().contains("holds no CA certificate"), "{err}");
    assert!(!err.to_string().contains("first-token-body"), "{err}");
    let http = Settings {
        kubelet_url: "http://127.0.0.1:10255".into(),
        ..s
    };
    let err = Kubelet::new(&http).err().unwrap();
    assert!(
        err.to_string().starts_with("kubernetes.kubelet_url:"),
        "{err}"
    );
}
