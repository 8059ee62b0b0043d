//! The `:authority` filter (tokend::testing::AuthorityFix) over frames the fuzzer describes:
//! header blocks written by a real HPACK encoder and cut into frames, other frames, raw bytes,
//! CONTINUATION floods and frames over h2's size limit, handed over in reads of any size.
//! Checks that it never panics, never holds more than one block of the size h2 takes, and that
//! what it passes on decodes (with an independent decoder, loona-hpack) to the same header lists
//! with only invalid `:authority` values changed, to valid ones of the same length.
#![no_main]

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use arbitrary::Arbitrary;
use httlib_hpack::Encoder;
use libfuzzer_sys::fuzz_target;
use tokend::testing::AuthorityFix;
use tokio::io::{AsyncRead, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
const HEAD_LEN: usize = 9;
/// What the filter may hold: HEADERS and 6 CONTINUATION frames of h2's largest size (16 KiB),
/// and the start of the next frame's header.
const MAX_HELD: usize = 7 * (HEAD_LEN + 16 * 1024) + HEAD_LEN;

#[derive(Arbitrary, Debug)]
enum Field {
    Indexed(u8),
    IndexedName(u8, Value, u8),
    Literal(Name, Value, u8),
}

#[derive(Arbitrary, Debug)]
enum Name {
    Authority,
    Path,
    Other(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Value {
    SocketPath,
    Localhost,
    Empty,
    Bytes(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Piece {
    /// A header block on `stream`, cut into frames at the given points.
    Block {
        stream: u8,
        fields: Vec<Field>,
        cuts: Vec<u16>,
        pad: Option<u8>,
        priority: bool,
    },
    Frame {
        kind: u8,
        flags: u8,
        stream: u8,
        payload: Vec<u8>,
    },
    /// `count` (mod 1024) empty CONTINUATION frames on `stream`, the last with END_HEADERS if
    /// `end`.
    Flood {
        stream: u8,
        count: u16,
        end: bool,
    },
    /// A frame of `kind` whose payload is `len` zeros, up to well over h2's limit.
    Big {
        kind: u8,
        flags: u8,
        len: u16,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    preface: bool,
    pieces: Vec<Piece>,
    reads: Vec<u16>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn value(v: &Value) -> Vec<u8> {
    match v {
        Value::SocketPath => b"/run/tokend/tokend.sock".to_vec(),
        Value::Localhost => b"localhost".to_vec(),
        Value::Empty => Vec::new(),
        Value::Bytes(b) => b.clone(),
    }
}

fn encode(enc: &mut Encoder<'_>, fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    // Flags: Huffman name/value, with indexing, never indexed.
    let flags = |f: u8| f & 0x0f;
    for f in fields {
        let _ = match f {
            Field::Indexed(i) => enc.encode_indexed(u32::from(*i % 61) + 1, &mut out),
            Field::IndexedName(i, v, f) => {
                let i = if i % 4 == 0 {
                    1
                } else {
                    u32::from(*i % 61) + 1
                };
                enc.encode_indexed_name(i, value(v), flags(*f), &mut out)
            }
            Field::Literal(n, v, f) => {
                let name = match n {
                    Name::Authority => b":authority".to_vec(),
                    Name::Path => b":path".to_vec(),
                    Name::Other(n) => n.iter().map(|c| b'a' + c % 26).collect(),
                };
                enc.encode_literal(name, value(v), flags(*f), &mut out)
            }
        };
    }
    out
}

fn stream_of(input: &Input) -> Vec<u8> {
    let mut enc = Encoder::default();
    let mut s = if input.preface {
        PREFACE.to_vec()
    } else {
        Vec::new()
    };
    for p in &input.pieces {
        match p {
            Piece::Block {
                stream,
                fields,
                cuts,
                pad,
                priority,
            } => {
                let block = encode(&mut enc, fields);
                let mut at: Vec<usize> = cuts
                    .iter()
                    .map(|&c| usize::from(c) % (block.len() + 1))
                    .collect();
                at.sort_unstable();
                at.push(block.len());
                let mut from = 0;
                for (i, &to) in at.iter().enumerate() {
                    let end = if i + 1 == at.len() { END_HEADERS } else { 0 };
                    let piece = &block[from..to];
                    from = to;
                    if i > 0 {
                        s.extend(frame(CONTINUATION, end, (*stream).into(), piece));
                        continue;
                    }
                    let mut payload = Vec::new();
                    let mut flags = end;
                    if let Some(n) = pad {
                        flags |= PADDED;
                        payload.push(*n);
                    }
                    if *priority {
                        flags |= PRIORITY;
                        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
                    }
                    payload.extend_from_slice(piece);
                    payload.resize(payload.len() + usize::from(pad.unwrap_or(0)), 0);
                    s.extend(frame(HEADERS, flags, (*stream).into(), &payload));
                }
            }
            Piece::Frame {
                kind,
                flags,
                stream,
                payload,
            } => s.extend(frame(*kind, *flags, (*stream).into(), payload)),
            Piece::Flood { stream, count, end } => {
                let count = count % 1024;
                for i in 0..count {
                    let flags = if *end && i + 1 == count {
                        END_HEADERS
                    } else {
                        0
                    };
                    s.extend(frame(CONTINUATION, flags, (*stream).into(), &[]));
                }
            }
            Piece::Big { kind, flags, len } => {
                let len = usize::from(*len) + 16 * 1024 - 1000;
                s.extend(frame(*kind, *flags, 1, &vec![0; len]));
            }
            Piece::Raw(bytes) => s.extend_from_slice(bytes),
        }
    }
    s
}

/// Hands out `data` in reads of the sizes given (cycled), waiting (Pending, then woken) before
/// each.
struct Feeder<'a> {
    data: &'a [u8],
    /// How far it has handed out, shared with the fuzz target.
    at: Rc<Cell<usize>>,
    reads: &'a [u16],
    read: usize,
    waited: bool,
}

impl AsyncRead for Feeder<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.waited {
            self.waited = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.waited = false;
        let size = match self.reads {
            [] => usize::MAX,
            reads => usize::from(reads[self.read % reads.len()]).max(1),
        };
        self.read += 1;
        let at = self.at.get();
        let n = size.min(buf.remaining()).min(self.data.len() - at);
        buf.put_slice(&self.data[at..at + n]);
        self.at.set(at + n);
        Poll::Ready(Ok(()))
    }
}

/// Follows how far the filter's output is behind its input. The filter passes frames on one
/// for one (only the lengths of held ones change), so each frame complete in the output, and the
/// bytes of the next, stand for as many of the input.
#[derive(Default)]
struct Lag {
    /// The ends of the frames complete in the output, in the input and in the output.
    input_at: usize,
    out_at: usize,
}

impl Lag {
    /// How many of the first `consumed` bytes of `input` are not yet in `out`.
    fn held_back(&mut self, input: &[u8], consumed: usize, out: &[u8]) -> usize {
        let frame_len = |s: &[u8], at: usize| {
            s.get(at..at + 3).map(|l| {
                HEAD_LEN + (usize::from(l[0]) << 16 | usize::from(l[1]) << 8 | usize::from(l[2]))
            })
        };
        if !input.starts_with(PREFACE) || out.len() < PREFACE.len() {
            return consumed.saturating_sub(out.len());
        }
        if self.out_at == 0 {
            (self.input_at, self.out_at) = (PREFACE.len(), PREFACE.len());
        }
        while let (Some(out_len), Some(in_len)) =
            (frame_len(out, self.out_at), frame_len(input, self.input_at))
        {
            if out.len() - self.out_at < out_len {
                break;
            }
            self.input_at += in_len;
            self.out_at += out_len;
        }
        consumed.saturating_sub(self.input_at + out.len() - self.out_at)
    }
}

/// Every header block in a stream of frames, as its frames' fragments joined; `None` if the
/// stream is not a clean sequence of frames.
fn blocks(stream: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut rest = stream.strip_prefix(PREFACE)?;
    let (mut blocks, mut block, mut open) = (Vec::new(), Vec::new(), false);
    while !rest.is_empty() {
        let len = u32::from_be_bytes([0, *rest.first()?, *rest.get(1)?, *rest.get(2)?]) as usize;
        let (kind, flags) = (*rest.get(3)?, *rest.get(4)?);
        let payload = rest.get(HEAD_LEN..HEAD_LEN + len)?;
        rest = &rest[HEAD_LEN + len..];
        let fragment = match (kind, open) {
            (HEADERS, false) => {
                let mut skip = 0;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    pad = usize::from(*payload.first()?);
                    skip = 1;
                }
                if flags & PRIORITY != 0 {
                    skip += 5;
                }
                payload.get(skip..payload.len().checked_sub(pad)?)?
            }
            (CONTINUATION, true) => payload,
            (HEADERS | CONTINUATION, _) => return None,
            _ if open => return None,
            _ => continue,
        };
        block.extend_from_slice(fragment);
        open = flags & END_HEADERS == 0;
        if !open {
            blocks.push(std::mem::take(&mut block));
        }
    }
    Some(blocks)
}

type Headers = Vec<(Vec<u8>, Vec<u8>)>;

fn decode(blocks: &[Vec<u8>]) -> Option<Vec<Headers>> {
    let mut decoder = loona_hpack::Decoder::new();
    decoder.set_max_allowed_table_size(4096);
    // loona-hpack refuses a block of nothing but size updates, which h2 takes and which
    // dropping an empty `:authority` can leave: each block is decoded with one static field
    // (`:method GET`) more, left out of the result.
    blocks
        .iter()
        .map(|b| {
            let mut headers = decoder.decode(&[&b[..], &[0x82]].concat()).ok()?;
            headers.pop();
            Some(headers)
        })
        .collect()
}

fn valid_authority(v: &[u8]) -> bool {
    http::uri::Authority::try_from(v).is_ok()
}

/// `new` is `old` with invalid `:authority` values replaced by valid ones of the same length,
/// left as they were, or (empty ones only) dropped.
fn same_but_authority(old: &Headers, new: &Headers) -> bool {
    let mut new = new.iter().peekable();
    for (name, value) in old {
        let bad = name == b":authority" && !valid_authority(value);
        match new.peek() {
            Some((n, v)) if n == name && v == value => {}
            Some((n, v)) if bad && n == name && v.len() == value.len() && valid_authority(v) => {}
            _ if bad && value.is_empty() => continue,
            _ => return false,
        }
        new.next();
    }
    new.next().is_none()
}

fuzz_target!(|input: Input| {
    let stream = stream_of(&input);
    let consumed = Rc::new(Cell::new(0));
    let mut conn = AuthorityFix::new(Feeder {
        data: &stream,
        at: consumed.clone(),
        reads: &input.reads,
        read: 0,
        waited: false,
    });
    let mut cx = Context::from_waker(Waker::noop());
    let mut out = Vec::new();
    let mut buf = vec![0; 4096];
    let mut lag = Lag::default();
    loop {
        let mut read = ReadBuf::new(&mut buf);
        match Pin::new(&mut conn).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(read.filled()),
            Poll::Ready(Err(e)) => panic!("the filter failed a read: {e}"),
            Poll::Pending => {
                let held = lag.held_back(&stream, consumed.get(), &out);
                assert!(held <= MAX_HELD, "{held} bytes held");
            }
        }
    }
    assert!(out.len() <= stream.len());
    if let (Some(old), Some(new)) = (blocks(&stream), blocks(&out)) {
        if let Some(old) = decode(&old) {
            let new = decode(&new).expect("what decoded before decodes after the filter");
            assert_eq!(old.len(), new.len());
            for (o, n) in old.iter().zip(&new) {
                assert!(same_but_authority(o, n), "{o:?}\n{n:?}");
            }
        }
    } else {
        assert!(blocks(&stream).is_none(), "the filter broke the framing");
    }
});
