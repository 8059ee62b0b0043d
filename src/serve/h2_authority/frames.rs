//! The HTTP/2 half of the fix: splits the client-to-server byte stream into frames, passes every
//! frame through as it arrives except header blocks, which it holds until complete (HEADERS plus
//! any CONTINUATION frames), has [`Tracker`] read, and passes on byte for byte unless a field
//! had to change; then it re-frames the block with the same frames, flags, priority and padding,
//! only the lengths adjusted. A first header block whose `:authority` h2 accepts as sent ends
//! the reading: everything after it passes unread.
//!
//! Whatever h2 would refuse (a frame over its size limit, a CONTINUATION flood, a broken block)
//! the filter does not judge: it passes on what it holds and everything after it unchanged, and
//! h2 ends the connection exactly as it would without the filter. So the filter holds at most
//! one block of the size h2 takes, and never more CPU than a pass over each byte.

use super::Malformed;
use super::hpack::{Edits, Sent, Tracker};

/// What every HTTP/2 connection starts with (RFC 9113 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub(crate) const HEAD_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The largest frame payload h2 takes from the client (SETTINGS_MAX_FRAME_SIZE): tonic leaves
/// it to hyper, whose 16 KiB is the HTTP/2 default, so the server's SETTINGS do not raise it;
/// h2 answers a larger frame with GOAWAY(FRAME_SIZE_ERROR) as soon as it reads its header.
pub(crate) const MAX_FRAME_SIZE: usize = 16 * 1024;

/// The most CONTINUATION frames without END_HEADERS h2 0.4 takes in one block. Its flood limit
/// is `max(header list size / frame size * 5/4, 5)`, which hyper's 16 KiB header list and
/// frame sizes make 5; the next one gets GOAWAY(ENHANCE_YOUR_CALM).
pub(crate) const MAX_CONTINUATIONS: usize = 5;

/// The most header block (frames included) held at once: a HEADERS frame, the CONTINUATION
/// frames h2 allows without END_HEADERS, and the one that ends it, each of h2's largest size.
/// The tests check it.
#[cfg(test)]
pub(crate) const MAX_HELD: usize = (MAX_CONTINUATIONS + 2) * (HEAD_LEN + MAX_FRAME_SIZE);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Inside the connection preface, this many bytes in.
    Preface(usize),
    /// Reading a frame header into `head`.
    Head,
    /// Passing this many more payload bytes straight through.
    Forward(usize),
    /// Holding this many more payload bytes of a header block frame.
    Held(usize),
    /// Not HTTP/2 with prior knowledge, or HTTP/2 that h2 will refuse: everything passes
    /// untouched, for the server to judge.
    Transparent,
}

/// A frame of the block being held.
#[derive(Debug)]
struct HeldFrame {
    /// Where its 9-byte header starts in `held`.
    start: usize,
    len: usize,
    /// Its part of the header block, in `held`.
    fragment: std::ops::Range<usize>,
}

/// The client-to-server direction of one connection, as a push parser: bytes in, bytes out.
#[derive(Debug)]
pub(crate) struct Filter {
    state: State,
    head: [u8; HEAD_LEN],
    head_len: usize,
    /// The stream whose header block is being held, if one is.
    block_stream: Option<u32>,
    /// CONTINUATION frames without END_HEADERS in the held block.
    continuations: usize,
    held: Vec<u8>,
    frames: Vec<HeldFrame>,
    /// The held block's fragments, joined, when it has more than one frame.
    block: Vec<u8>,
    edits: Edits,
    tracker: Tracker,
    /// Whether the connection's first header block has been read.
    read_first: bool,
    /// Header blocks changed so far on this connection.
    pub(crate) rewritten: u64,
    /// Why the filter stopped reading the connection and passes it on unchanged, if it did.
    pub(crate) aside: Option<Malformed>,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            state: State::Preface(0),
            head: [0; HEAD_LEN],
            head_len: 0,
            block_stream: None,
            continuations: 0,
            held: Vec::new(),
            frames: Vec::new(),
            block: Vec::new(),
            edits: Edits::default(),
            tracker: Tracker::default(),
            read_first: false,
            rewritten: 0,
            aside: None,
        }
    }
}

impl Filter {
    /// Consumes all of `input`, appending to `out` what can go to the server now.
    pub(crate) fn process(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            match self.state {
                State::Transparent => {
                    out.extend_from_slice(input);
                    return;
                }
                State::Preface(seen) => {
                    let take = input.len().min(PREFACE.len() - seen);
                    if input[..take] != PREFACE[seen..seen + take] {
                        self.state = State::Transparent;
                        continue;
                    }
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if seen + take == PREFACE.len() {
                        State::Head
                    } else {
                        State::Preface(seen + take)
                    };
                }
                State::Head => {
                    let take = input.len().min(HEAD_LEN - self.head_len);
                    self.head[self.head_len..self.head_len + take].copy_from_slice(&input[..take]);
                    self.head_len += take;
                    input = &input[take..];
                    if self.head_len == HEAD_LEN {
                        self.head_len = 0;
                        self.frame_head(out);
                    }
                }
                State::Forward(rest) => {
                    let take = input.len().min(rest);
                    out.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    self.state = if take == rest {
                        State::Head
                    } else {
                        State::Forward(rest - take)
                    };
                }
                State::Held(rest) => {
                    let take = input.len().min(rest);
                    self.held.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    if take == rest {
                        self.state = State::Head;
                        self.held_frame_done(out);
                    } else {
                        self.state = State::Held(rest - take);
                    }
                }
            }
        }
    }

    /// At the end of the client's stream: what is still held goes out unchanged. An incomplete
    /// frame carries no request, and the server sees the stream end as it would have.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held);
        out.extend_from_slice(&self.head[..self.head_len]);
        self.held.clear();
        self.head_len = 0;
        self.state = State::Transparent;
    }

    /// Passes on what is held, unchanged, and from now on everything: the client broke HTTP/2
    /// in a way h2 ends the connection for, and h2 is to say how.
    fn step_aside(&mut self, out: &mut Vec<u8>, why: &'static str) {
        out.extend_from_slice(&self.held);
        self.held.clear();
        self.frames.clear();
        self.state = State::Transparent;
        self.aside = Some(Malformed(why));
    }

    fn frame_head(&mut self, out: &mut Vec<u8>) {
        let h = self.head;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let refused = if len > MAX_FRAME_SIZE {
            Some("a frame larger than SETTINGS_MAX_FRAME_SIZE")
        } else {
            match (kind, self.block_stream) {
                (CONTINUATION, Some(s)) if s == stream => {
                    if flags & END_HEADERS == 0 {
                        self.continuations += 1;
                    }
                    (self.continuations > MAX_CONTINUATIONS)
                        .then_some("more CONTINUATION frames than h2 takes")
                }
                (_, Some(_)) => Some("a header block is interrupted"),
                (CONTINUATION, None) => Some("CONTINUATION without HEADERS"),
                (HEADERS, None) => {
                    self.block_stream = Some(stream);
                    self.continuations = 0;
                    None
                }
                _ => {
                    out.extend_from_slice(&h);
                    self.state = if len == 0 {
                        State::Head
                    } else {
                        State::Forward(len)
                    };
                    return;
                }
            }
        };
        if let Some(why) = refused {
            self.step_aside(out, why);
            out.extend_from_slice(&h);
            return;
        }
        self.frames.push(HeldFrame {
            start: self.held.len(),
            len,
            fragment: 0..0,
        });
        self.held.extend_from_slice(&h);
        if len == 0 {
            self.held_frame_done(out);
        } else {
            self.state = State::Held(len);
        }
    }

    /// A HEADERS or CONTINUATION frame is complete in `held`: find its fragment, and if it
    /// ends the block, pass the block on.
    fn held_frame_done(&mut self, out: &mut Vec<u8>) {
        let Some(frame) = self.frames.last_mut() else {
            return;
        };
        let (kind, flags) = (self.held[frame.start + 3], self.held[frame.start + 4]);
        let payload = frame.start + HEAD_LEN..frame.start + HEAD_LEN + frame.len;
        let (mut skip, mut pad) = (0usize, 0);
        if kind == HEADERS {
            if flags & PADDED != 0 {
                pad = self
                    .held
                    .get(payload.start)
                    .map_or(usize::MAX, |&b| b.into());
                skip += 1;
            }
            if flags & PRIORITY != 0 {
                skip += 5;
            }
        }
        if skip.saturating_add(pad) > frame.len {
            return self.step_aside(out, "HEADERS padding or priority longer than the frame");
        }
        frame.fragment = payload.start + skip..payload.end - pad;
        if flags & END_HEADERS != 0 {
            self.block_done(out);
        }
    }

    fn block_done(&mut self, out: &mut Vec<u8>) {
        // A block of one frame, as clients send them, is read where it lies.
        let block = match &self.frames[..] {
            [only] => &self.held[only.fragment.clone()],
            frames => {
                self.block.clear();
                for f in frames {
                    self.block.extend_from_slice(&self.held[f.fragment.clone()]);
                }
                &self.block[..]
            }
        };
        self.edits.clear();
        let sent = match self.tracker.rewrite_block(block, &mut self.edits) {
            Ok(sent) => sent,
            Err(e) => return self.step_aside(out, e.0),
        };
        if self.edits.is_empty() {
            out.extend_from_slice(&self.held);
        } else {
            self.rewritten += 1;
            reframe(&self.held, &self.frames, &self.edits, out);
        }
        self.held.clear();
        self.frames.clear();
        self.block_stream = None;
        let first = !std::mem::replace(&mut self.read_first, true);
        if first && sent == Sent::Accepted {
            // A client sends one `:authority` for every request of a connection, in its first
            // header block. When h2 takes that one as sent, this connection has nothing to fix:
            // the filter stops reading it, and a later block h2 refuses is h2's to answer.
            self.state = State::Transparent;
        }
    }

    /// Whether everything from now on passes unread: the client's `:authority` needs no fix,
    /// or the connection is h2's to refuse.
    pub(crate) fn passes_through(&self) -> bool {
        self.state == State::Transparent
    }
}

/// Writes the held frames with the edited block: each frame keeps its header fields, pad
/// length, priority and padding, and carries the edited version of its old fragment. One pass
/// over the frames, the edits and the bytes.
fn reframe(held: &[u8], frames: &[HeldFrame], edits: &Edits, out: &mut Vec<u8>) {
    let (mut at, mut next) = (0, 0);
    for f in frames {
        let head_at = out.len();
        out.extend_from_slice(&held[f.start..f.fragment.start]);
        edits.apply(&held[f.fragment.clone()], at, &mut next, out);
        out.extend_from_slice(&held[f.fragment.end..f.start + HEAD_LEN + f.len]);
        let len = out.len() - head_at - HEAD_LEN;
        out[head_at..head_at + 3].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
        at += f.fragment.len();
    }
}
