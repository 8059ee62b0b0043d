//! Oversized and odd client names: a 4 MiB name, names longer than a config can hold, names
//! with characters a config name cannot have. Each gets INVALID_ARGUMENT (or, for the 4 MiB
//! one, a refusal of the message's size) with a short message that does not repeat it, and the
//! whole answer on the connection stays small; a well-behaved caller keeps getting its token.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokend::proto::token_service_client::TokenServiceClient;
use tokend::proto::{GetTokenRequest, RefreshTokenRequest, WatchTokenRequest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tonic::Code;
use tonic::transport::Channel;

use crate::common::{Daemon, secret_file};
use crate::fault::{FaultEndpoint, Reply};

/// What the daemon says about a name no config can hold.
const INVALID: &str =
    "client must name a configured client: 1 to 128 ASCII letters, digits, '-', '_' and '.'";

/// A Unix socket connection that counts the bytes the daemon sent on it.
struct Counted {
    stream: UnixStream,
    received: Arc<AtomicUsize>,
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.received
            .fetch_add(buf.filled().len() - before, Ordering::Relaxed);
        poll
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A connection of its own, and the count of the bytes the daemon sends on it.
async fn counted_client(d: &Daemon) -> (TokenServiceClient<Channel>, Arc<AtomicUsize>) {
    let received = Arc::new(AtomicUsize::new(0));
    let path = d.socket.clone();
    let counter = received.clone();
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            let received = counter.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(Counted {
                    stream: UnixStream::connect(path).await?,
                    received,
                }))
            }
        }))
        .await
        .unwrap();
    (
        TokenServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024),
        received,
    )
}

async fn daemon(endpoint: &FaultEndpoint) -> Daemon {
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "secret", "s3cret");
    let d = Daemon::start_in(
        dir,
        &format!(
            "[clients.app]\ntoken_endpoint = \"{}\"\nclient_id = \"app\"\n\
             client_secret_file = \"{{dir}}/secret\"\n",
            endpoint.url
        ),
    )
    .await;
    assert_gets_its_token(&d).await;
    d
}

async fn assert_gets_its_token(d: &Daemon) {
    let mut req = tonic::Request::new(GetTokenRequest {
        client: "app".into(),
        min_valid_seconds: 0,
    });
    req.set_timeout(Duration::from_secs(10));
    let token = d.client().await.get_token(req).await.unwrap().into_inner();
    assert_eq!(token.access_token, "t");
}

/// The status each method answers for `name`, with the bytes the daemon sent for each.
async fn every_method(d: &Daemon, name: &str) -> Vec<(&'static str, tonic::Status, usize)> {
    let mut answers = Vec::new();
    let (mut rpc, received) = counted_client(d).await;
    let status = rpc
        .get_token(GetTokenRequest {
            client: name.into(),
            min_valid_seconds: 0,
        })
        .await
        .unwrap_err();
    answers.push(("GetToken", status, received.load(Ordering::Relaxed)));
    let (mut rpc, received) = counted_client(d).await;
    let status = rpc
        .watch_token(WatchTokenRequest {
            client: name.into(),
        })
        .await
        .expect_err("no stream for a bad name");
    answers.push(("WatchToken", status, received.load(Ordering::Relaxed)));
    let (mut rpc, received) = counted_client(d).await;
    let status = rpc
        .refresh_token(RefreshTokenRequest {
            client: name.into(),
            rejected_access_token: "t".into(),
        })
        .await
        .unwrap_err();
    answers.push(("RefreshToken", status, received.load(Ordering::Relaxed)));
    answers
}

#[tokio::test(flavor = "multi_thread")]
async fn a_4_mib_name_gets_a_short_answer_that_does_not_repeat_it() {
    let endpoint = FaultEndpoint::start(Reply::token("t", 300)).await;
    let d = daemon(&endpoint).await;
    // Just under tonic's default 4 MiB message limit, so that it reaches the service.
    let name = "a".repeat(4 * 1024 * 1024 - 100);
    for (method, status, received) in every_method(&d, &name).await {
        // INVALID_ARGUMENT from the service, or OUT_OF_RANGE where the 16 KiB message limit
        // turns the request away first (tonic's code for a message over the limit).
        assert!(
            matches!(status.code(), Code::InvalidArgument | Code::OutOfRange),
            "{method}: {:?} {}",
            status.code(),
            status.message().len()
        );
        assert!(
            status.message().len() < 200 && !status.message().contains("aaaaaaaa"),
            "{method}: {} bytes of message",
            status.message().len()
        );
        assert!(
            received < 4096,
            "{method}: the daemon sent {received} bytes for it"
        );
    }
    assert_gets_its_token(&d).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn names_no_config_can_hold_are_invalid_arguments_and_never_echoed() {
    let endpoint = FaultEndpoint::start(Reply::token("t", 300)).await;
    let d = daemon(&endpoint).await;
    let long = "b".repeat(129);
    let longer = "c".repeat(2000);
    let odd = [
        "",
        long.as_str(),
        longer.as_str(),
        "app\n",
        "app\r\nx-injected: 1",
        "app\u{0}",
        "../app",
        "app app",
        "\u{e1}pp",
        "\u{202e}ppa",
        "app%2F",
        "app\"",
    ];
    for name in odd {
        for (method, status, received) in every_method(&d, name).await {
            assert_eq!(status.code(), Code::InvalidArgument, "{method} {name:?}");
            assert_eq!(status.message(), INVALID, "{method} {name:?}");
            assert!(received < 4096, "{method} {name:?}: {received} bytes");
        }
    }
    // A name a config could hold is repeated back as it is: short, and harmless.
    for (method, status, _) in every_method(&d, "nope").await {
        assert_eq!(status.code(), Code::NotFound, "{method}");
        assert_eq!(status.message(), "no client named \"nope\" is configured");
    }
    assert_gets_its_token(&d).await;
}
