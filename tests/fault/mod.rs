//! A fault-injecting token endpoint: a bare HTTP/1.1 server on 127.0.0.1 that answers each
//! request with the next scripted reply (status, headers, body, delay, a stall or a dropped
//! connection) and records what it saw and when. Every reply closes its connection, so each
//! token request is exactly one connection and one record.
//!
//! Time is tokio's, so tests can run it on the paused clock.

#![allow(dead_code)] // Each test uses a different part of the script vocabulary.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// What the endpoint does with one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// A complete response after `delay`.
    Http {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        delay: Duration,
    },
    /// Headers and half the body, then silence with the connection open.
    Stall { body: Vec<u8> },
    /// A response whose body is `size` bytes of JSON-ish filler.
    Huge { size: usize },
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    /// A successful token reply with `expires_in`.
    pub fn token(access_token: &str, expires_in: u64) -> Reply {
        Reply::json(
            200,
            serde_json::json!({
                "access_token": access_token, "token_type": "Bearer",
                "expires_in": expires_in, "scope": "api:read"
            }),
        )
    }

    pub fn json(status: u16, body: serde_json::Value) -> Reply {
        Reply::Http {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }

    pub fn raw(status: u16, content_type: &str, body: &[u8]) -> Reply {
        Reply::Http {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.to_vec(),
            delay: Duration::ZERO,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Reply {
        if let Reply::Http { headers, .. } = &mut self {
            headers.push((name.into(), value.into()));
        }
        self
    }

    pub fn after(mut self, d: Duration) -> Reply {
        if let Reply::Http { delay, .. } = &mut self {
            *delay = d;
        }
        self
    }
}

/// One request as the endpoint saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Instant,
    pub body: String,
    pub authorization: Option<String>,
    /// The DPoP proof, for a DPoP client's requests.
    pub dpop: Option<String>,
    /// How many requests were being handled at that moment, this one included.
    pub concurrent: usize,
}

#[derive(Default)]
struct State {
    script: VecDeque<Reply>,
    /// Answer when the script is empty.
    otherwise: Option<Reply>,
    seen: Vec<Seen>,
    active: usize,
}

#[derive(Clone)]
pub struct FaultEndpoint {
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl FaultEndpoint {
    /// Starts the endpoint; replies to requests past the script with `otherwise`.
    pub async fn start(otherwise: Reply) -> FaultEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let state = Arc::new(Mutex::new(State {
            otherwise: Some(otherwise),
            ..State::default()
        }));
        let accept_state = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, accept_state.clone()));
            }
        });
        FaultEndpoint { url, state }
    }

    /// Appends replies to the script.
    pub fn then(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// Replaces what is answered once the script runs out.
    pub fn otherwise(&self, reply: Reply) {
        self.state.lock().unwrap().otherwise = Some(reply);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    pub fn count(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }

    /// Seconds after `t0` of each request seen from `t0` on.
    pub fn times_since(&self, t0: Instant) -> Vec<f64> {
        self.seen()
            .iter()
            .filter(|s| s.at >= t0)
            .map(|s| (s.at - t0).as_secs_f64())
            .collect()
    }
}

async fn serve(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    let Some((head, body)) = read_request(&mut stream).await else {
        return;
    };
    let field = |name: &str| {
        head.lines().find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then(|| v.to_string())
        })
    };
    let (authorization, dpop) = (field("authorization"), field("dpop"));
    let reply = {
        let mut s = state.lock().unwrap();
        s.active += 1;
        let concurrent = s.active;
        s.seen.push(Seen {
            at: Instant::now(),
            body,
            authorization,
            dpop,
            concurrent,
        });
        let next = s.script.pop_front();
        next.or_else(|| s.otherwise.clone()).unwrap_or(Reply::Drop)
    };
    match reply {
        Reply::Http {
            status,
            headers,
            body,
            delay,
        } => {
            tokio::time::sleep(delay).await;
            // Answered: no longer counted as in progress, even before the bytes are out.
            state.lock().unwrap().active -= 1;
            let mut out = format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = stream.write_all(out.as_bytes()).await;
            let _ = stream.write_all(&body).await;
            let _ = stream.shutdown().await;
            return;
        }
        Reply::Stall { body } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(&body[..body.len() / 2]).await;
            // Hold the connection open until the client gives up.
            let mut sink = [0u8; 64];
            let _ = stream.read(&mut sink).await;
        }
        Reply::Huge { size } => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let chunk = vec![b' '; 64 * 1024];
            let mut sent = 0;
            while sent < size {
                let n = chunk.len().min(size - sent);
                if stream.write_all(&chunk[..n]).await.is_err() {
                    break; // The client stopped reading: what a size cap looks like.
                }
                sent += n;
            }
        }
        Reply::Drop => {}
    }
    let _ = stream.shutdown().await;
    state.lock().unwrap().active -= 1;
}

/// Reads one request: headers, then a Content-Length body.
async fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < header_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[header_end..header_end + length]).to_string();
    Some((head, body))
}
