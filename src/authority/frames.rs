//! The HTTP/2 half of the fix: splits the client-to-server byte stream into frames, passes every
//! frame through as it arrives except header blocks, which it holds until complete (HEADERS plus
//! any CONTINUATION frames), has [`Tracker`] read, and passes on byte for byte unless a field
//! had to change; then it re-frames the block with the same frames, flags, priority and padding,
//! only the lengths adjusted.

use super::Malformed;
use super::hpack::{Edit, Tracker};

/// What every HTTP/2 connection starts with (RFC 9113 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEAD_LEN: usize = 9;

const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

/// The most header block (frames included) held at once. h2 as tonic configures it fails a
/// connection whose header block spans more than 7 frames of 16 KiB (its CONTINUATION flood
/// limit, 5 unfinished CONTINUATION frames), so this never cuts off a block h2 would take.
pub(crate) const MAX_HELD: usize = 128 * 1024;

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
    /// Not HTTP/2 with prior knowledge: everything passes untouched, for the server to refuse.
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
    held: Vec<u8>,
    frames: Vec<HeldFrame>,
    block: Vec<u8>,
    edits: Vec<Edit>,
    tracker: Tracker,
    /// Header blocks changed so far on this connection.
    pub(crate) rewritten: u64,
}

impl Default for Filter {
    fn default() -> Self {
        Filter {
            state: State::Preface(0),
            head: [0; HEAD_LEN],
            head_len: 0,
            block_stream: None,
            held: Vec::new(),
            frames: Vec::new(),
            block: Vec::new(),
            edits: Vec::new(),
            tracker: Tracker::default(),
            rewritten: 0,
        }
    }
}

impl Filter {
    /// Consumes all of `input`, appending to `out` what can go to the server now. An error
    /// means the client broke HTTP/2 in a way h2 would end the connection for.
    pub(crate) fn process(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Malformed> {
        while !input.is_empty() {
            match self.state {
                State::Transparent => {
                    out.extend_from_slice(input);
                    return Ok(());
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
                        self.frame_head(out)?;
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
                        self.held_frame_done(out)?;
                    } else {
                        self.state = State::Held(rest - take);
                    }
                }
            }
        }
        Ok(())
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

    fn frame_head(&mut self, out: &mut Vec<u8>) -> Result<(), Malformed> {
        let h = self.head;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let kind = h[3];
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        match (kind, self.block_stream) {
            (CONTINUATION, Some(s)) if s == stream => {}
            (_, Some(_)) => return Err(Malformed("a header block is interrupted")),
            (CONTINUATION, None) => return Err(Malformed("CONTINUATION without HEADERS")),
            (HEADERS, None) => self.block_stream = Some(stream),
            _ => {
                out.extend_from_slice(&h);
                self.state = if len == 0 {
                    State::Head
                } else {
                    State::Forward(len)
                };
                return Ok(());
            }
        }
        if self.held.len() + HEAD_LEN + len > MAX_HELD {
            return Err(Malformed("a header block is larger than 128 KiB"));
        }
        self.frames.push(HeldFrame {
            start: self.held.len(),
            len,
            fragment: 0..0,
        });
        self.held.extend_from_slice(&h);
        if len == 0 {
            self.held_frame_done(out)
        } else {
            self.state = State::Held(len);
            Ok(())
        }
    }

    /// A HEADERS or CONTINUATION frame is complete in `held`: find its fragment, and if it
    /// ends the block, pass the block on.
    fn held_frame_done(&mut self, out: &mut Vec<u8>) -> Result<(), Malformed> {
        let frame = self.frames.last_mut().expect("a held frame");
        let head = &self.held[frame.start..frame.start + HEAD_LEN];
        let (kind, flags) = (head[3], head[4]);
        let payload = frame.start + HEAD_LEN..frame.start + HEAD_LEN + frame.len;
        let (mut skip, mut pad) = (0, 0);
        if kind == HEADERS {
            if flags & PADDED != 0 {
                pad = usize::from(
                    *self
                        .held
                        .get(payload.start)
                        .ok_or(Malformed("a padded HEADERS frame has no pad length"))?,
                );
                skip += 1;
            }
            if flags & PRIORITY != 0 {
                skip += 5;
            }
        }
        if skip + pad > frame.len {
            return Err(Malformed(
                "HEADERS padding or priority longer than the frame",
            ));
        }
        frame.fragment = payload.start + skip..payload.end - pad;
        if flags & END_HEADERS != 0 {
            self.block_done(out)?;
        }
        Ok(())
    }

    fn block_done(&mut self, out: &mut Vec<u8>) -> Result<(), Malformed> {
        self.block.clear();
        for f in &self.frames {
            self.block.extend_from_slice(&self.held[f.fragment.clone()]);
        }
        self.edits.clear();
        self.tracker.rewrite_block(&self.block, &mut self.edits)?;
        if self.edits.is_empty() {
            out.extend_from_slice(&self.held);
        } else {
            self.rewritten += 1;
            self.reframe(out);
        }
        self.held.clear();
        self.frames.clear();
        self.block_stream = None;
        Ok(())
    }

    /// Writes the held frames with the edited block: each frame keeps its header fields, pad
    /// length, priority and padding, and carries the edited version of its old fragment.
    fn reframe(&self, out: &mut Vec<u8>) {
        let mut block = Vec::with_capacity(self.block.len());
        let mut at = 0;
        for e in &self.edits {
            block.extend_from_slice(&self.block[at..e.range.start]);
            block.extend_from_slice(&e.bytes);
            at = e.range.end;
        }
        block.extend_from_slice(&self.block[at..]);

        let mut old_at = 0;
        for f in &self.frames {
            let old = old_at..old_at + f.fragment.len();
            old_at = old.end;
            let new = self.new_offset(old.start)..self.new_offset(old.end);
            let len = f.len - old.len() + new.len();
            let head = &self.held[f.start..f.start + HEAD_LEN];
            out.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
            out.extend_from_slice(&head[3..]);
            out.extend_from_slice(&self.held[f.start + HEAD_LEN..f.fragment.start]);
            out.extend_from_slice(&block[new]);
            out.extend_from_slice(&self.held[f.fragment.end..f.start + HEAD_LEN + f.len]);
        }
    }

    /// Where offset `at` of the old block lands in the edited one. Edits only shrink, so this is
    /// monotonic; an offset inside an edit maps into (or to the end of) its replacement.
    fn new_offset(&self, at: usize) -> usize {
        let mut removed = 0;
        for e in &self.edits {
            if at <= e.range.start {
                break;
            }
            if at < e.range.end {
                return e.range.start - removed + (at - e.range.start).min(e.bytes.len());
            }
            removed += e.range.len() - e.bytes.len();
        }
        at - removed
    }
}
