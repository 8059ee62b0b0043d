//! CONTINUATION floods and worst-case header blocks over the Unix socket (#13, point 4): the
//! `:authority` filter in front of h2 holds no more than h2 takes and costs one pass per byte,
//! h2 ends each attacker's connection with its own GOAWAY, and a well-behaved caller on another
//! connection keeps getting its token.

use std::time::{Duration, Instant};

use tokend::proto::GetTokenRequest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::common::{Daemon, eventually, secret_file};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 0x1;
const FRAME_SIZE_ERROR: u32 = 0x6;
const ENHANCE_YOUR_CALM: u32 = 0xb;
/// h2's limits as tonic configures it, which the filter enforces.
const MAX_FRAME_SIZE: usize = 16 * 1024;
const MAX_CONTINUATIONS: usize = 5;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A daemon with one client, `app`, against the demo token endpoint.
async fn daemon() -> Daemon {
    let endpoint = tokend::cli::demo::start_endpoint().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    secret_file(dir.path(), "app.secret", "basic:s3cret+demo");
    let clients = format!(
        "[clients.app]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"demo-basic\"\n\
         client_secret_file = \"{{dir}}/app.secret\"\n"
    );
    let d = Daemon::start_in(dir, &clients).await;
    let mut client = d.client().await;
    eventually(Duration::from_secs(10), "a first token", || {
        let mut client = client.clone();
        async move { client.get_token(get()).await.ok() }
    })
    .await;
    let _ = client.get_token(get()).await;
    d
}

fn get() -> GetTokenRequest {
    GetTokenRequest {
        client: "app".into(),
        min_valid_seconds: 0,
    }
}

/// A GetToken request's header block as gRPC's C core sends it over a Unix socket: the
/// socket path as `:authority`, every field a literal that adds nothing to the table.
fn get_token_block(socket: &str) -> Vec<u8> {
    let literal = |prefix: &[u8], value: &[u8]| [prefix, &[value.len() as u8], value].concat();
    [
        vec![0x83, 0x86],
        literal(&[0x04], b"/tokend.v1.TokenService/GetToken"),
        literal(&[0x01], socket.as_bytes()),
        literal(&[0x0f, 0x10], b"application/grpc"),
        literal(b"\x00\x02te", b"trailers"),
    ]
    .concat()
}

/// The frames the server sends on `conn` until it closes it (or 10 s pass): kind, flags,
/// payload.
async fn frames_until_closed(conn: &mut tokio::net::unix::OwnedReadHalf) -> Vec<(u8, u8, Vec<u8>)> {
    let mut bytes = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut bytes)).await;
    parse(&bytes)
}

fn parse(mut bytes: &[u8]) -> Vec<(u8, u8, Vec<u8>)> {
    let mut frames = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let Some(payload) = bytes.get(9..9 + len) else {
            break;
        };
        frames.push((bytes[3], bytes[4], payload.to_vec()));
        bytes = &bytes[9 + len..];
    }
    frames
}

/// The error code of the server's GOAWAY among `frames`.
fn goaway(frames: &[(u8, u8, Vec<u8>)]) -> Option<u32> {
    frames
        .iter()
        .find(|f| f.0 == GOAWAY)
        .map(|f| u32::from_be_bytes(f.2[4..8].try_into().unwrap()))
}

/// Sends `attack` on a new connection and returns how the server ended it: its GOAWAY error
/// code, once it has closed the connection.
async fn attack(socket: &std::path::Path, attack: Vec<u8>) -> Option<u32> {
    let (mut read, mut write) = UnixStream::connect(socket).await.unwrap().into_split();
    let writer = tokio::spawn(async move {
        // The server stops reading once it has refused the attack.
        let _ = write.write_all(&attack).await;
        write
    });
    let frames = frames_until_closed(&mut read).await;
    drop(writer.await);
    goaway(&frames)
}

/// The start of every attacking connection, and a block that adds an empty `:authority` to the
/// table, so that each one-byte reference to it later is an edit for the filter.
fn opening() -> Vec<u8> {
    [
        PREFACE,
        &frame(SETTINGS, 0, 0, &[]),
        &frame(HEADERS, END_HEADERS, 1, &[0x41, 0x00, 0x82]),
    ]
    .concat()
}

/// What cost the filter most before: a header block of thousands of CONTINUATION frames and
/// tens of thousands of edits, just within the 128 KiB the filter used to hold.
fn continuation_flood() -> Vec<u8> {
    let mut a = opening();
    a.extend(frame(HEADERS, 0, 3, &[0xbe; 15_000]));
    for _ in 0..3 {
        a.extend(frame(CONTINUATION, 0, 3, &[0xbe; 15_000]));
    }
    for _ in 0..7000 {
        a.extend(frame(CONTINUATION, 0, 3, &[]));
    }
    a.extend(frame(CONTINUATION, END_HEADERS, 3, &[0xbe]));
    a
}

/// A stock client's request block (one edit) followed by empty CONTINUATION frames without
/// end: h2 counts them.
fn empty_continuations(socket: &str) -> Vec<u8> {
    let mut a = opening();
    a.extend(frame(HEADERS, 0, 3, &get_token_block(socket)));
    for _ in 0..10_000 {
        a.extend(frame(CONTINUATION, 0, 3, &[]));
    }
    a
}

/// A header block frame one byte over h2's limit, full of edits.
fn oversized_frame() -> Vec<u8> {
    [
        opening(),
        frame(HEADERS, END_HEADERS, 3, &[0xbe; MAX_FRAME_SIZE + 1]),
    ]
    .concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn continuation_floods_are_ended_by_h2_and_cost_other_callers_nothing() {
    let d = daemon().await;
    let attackers: Vec<_> = (0..4)
        .map(|i| {
            let socket = d.socket.clone();
            tokio::spawn(async move {
                let mut ends = Vec::new();
                for round in 0..30 {
                    let (payload, expected) = match (i + round) % 3 {
                        // h2 decodes the first frames as they come, finds `:authority` repeated
                        // (a malformed request: it resets the stream and forgets the block), and
                        // then refuses the CONTINUATION frames of a block it no longer has.
                        0 => (continuation_flood(), PROTOCOL_ERROR),
                        1 => (
                            empty_continuations(socket.to_str().unwrap()),
                            ENHANCE_YOUR_CALM,
                        ),
                        _ => (oversized_frame(), FRAME_SIZE_ERROR),
                    };
                    ends.push((attack(&socket, payload).await, expected));
                }
                ends
            })
        })
        .collect();

    let mut client = d.client().await;
    let mut took = Vec::new();
    while !attackers.iter().all(|a| a.is_finished()) {
        let start = Instant::now();
        client.get_token(get()).await.unwrap();
        took.push(start.elapsed());
    }
    let mut ends = Vec::new();
    for a in attackers {
        ends.extend(a.await.unwrap());
    }
    took.sort();
    let p99 = took[took.len() * 99 / 100];
    eprintln!(
        "{} GetToken calls during the attack: median {:?}, p99 {p99:?}, max {:?}",
        took.len(),
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert!(took.len() >= 10, "only {} calls", took.len());
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
    for (end, expected) in ends {
        assert_eq!(end, Some(expected), "h2 ends each attack with its GOAWAY");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_filter_holds_what_h2_takes_and_no_more() {
    let d = daemon().await;
    let socket = d.socket.to_str().unwrap();

    // The server advertises the limits the filter enforces (or none, which is the same).
    let (mut read, mut write) = UnixStream::connect(socket).await.unwrap().into_split();
    write.write_all(PREFACE).await.unwrap();
    write.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    // A GetToken request from a stock client, its block spread over as many CONTINUATION
    // frames as h2 takes: answered.
    let block = get_token_block(socket);
    let mut request = frame(HEADERS, 0, 1, &block[..1]);
    for i in 1..=MAX_CONTINUATIONS {
        request.extend(frame(CONTINUATION, 0, 1, &block[i..i + 1]));
    }
    request.extend(frame(
        CONTINUATION,
        END_HEADERS,
        1,
        &block[MAX_CONTINUATIONS + 1..],
    ));
    request.extend(frame(DATA, END_STREAM, 1, b"\0\0\0\0\x05\x0a\x03app"));
    write.write_all(&request).await.unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0; 4096];
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = read.read(&mut buf).await.unwrap();
            assert_ne!(n, 0, "closed: {:?}", parse(&bytes));
            bytes.extend_from_slice(&buf[..n]);
            if parse(&bytes).iter().any(|f| f.0 == HEADERS) {
                return parse(&bytes);
            }
        }
    })
    .await
    .expect("an answer");
    assert_eq!(goaway(&answered), None);
    let settings = &answered
        .iter()
        .find(|f| f.0 == SETTINGS && f.1 == 0)
        .unwrap()
        .2;
    for s in settings.chunks(6) {
        let value = u32::from_be_bytes(s[2..6].try_into().unwrap()) as usize;
        match u16::from_be_bytes([s[0], s[1]]) {
            0x5 => assert_eq!(value, MAX_FRAME_SIZE, "SETTINGS_MAX_FRAME_SIZE"),
            0x6 => assert_eq!(value, 16 * 1024, "SETTINGS_MAX_HEADER_LIST_SIZE"),
            _ => {}
        }
    }

    // One CONTINUATION frame more: h2 ends the connection, as it would without the filter.
    let mut flood = [PREFACE, &frame(SETTINGS, 0, 0, &[])].concat();
    flood.extend(frame(HEADERS, 0, 1, &block[..1]));
    for i in 1..=MAX_CONTINUATIONS + 1 {
        flood.extend(frame(CONTINUATION, 0, 1, &block[i..i + 1]));
    }
    assert_eq!(attack(&d.socket, flood).await, Some(ENHANCE_YOUR_CALM));
}
