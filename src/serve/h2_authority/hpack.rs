//! The HPACK half of the fix: reads a client's header blocks just far enough to keep a model of
//! the server's dynamic table and to find the `:authority` fields h2 would reject, and says how
//! to replace them.
//!
//! The model holds, per entry, only its size and whether its name is `:authority` (and if so,
//! whether the value the *server* holds is one h2 accepts). Strings are decoded only when their
//! length matters (entries added to the table) or their content does (`:authority` values).
//!
//! Consistency: a replaced value has the same decoded length as the one it replaces and keeps
//! its representation (indexed, with incremental indexing, without indexing, never indexed), so
//! the server's table gets the same entries of the same sizes in the same order, and evicts
//! exactly when the client's does. Every later reference to an entry then points at the same
//! entry on both sides, and an entry that held a bad authority holds a good one on the server.

use std::collections::VecDeque;
use std::ops::Range;

use super::Malformed;

/// The largest dynamic table a client may ask for. tonic leaves h2's SETTINGS_HEADER_TABLE_SIZE
/// at the HTTP/2 default, and h2 fails a connection whose client asks for more.
pub(crate) const MAX_TABLE_SIZE: usize = 4096;

/// RFC 7541 4.1: an entry's size is its name and value lengths plus this overhead.
const ENTRY_OVERHEAD: usize = 32;

/// The names of the static table (RFC 7541 Appendix A), index 1 first; their lengths size the
/// entries that reuse them.
const STATIC_NAMES: [&str; 61] = [
    ":authority",
    ":method",
    ":method",
    ":path",
    ":path",
    ":scheme",
    ":scheme",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    ":status",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "accept",
    "access-control-allow-origin",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "link",
    "location",
    "max-forwards",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "refresh",
    "retry-after",
    "server",
    "set-cookie",
    "strict-transport-security",
    "transfer-encoding",
    "user-agent",
    "vary",
    "via",
    "www-authenticate",
];

const AUTHORITY: &[u8] = b":authority";

/// `:authority` Huffman-coded. HPACK's padding rules make a string's Huffman form unique, so a
/// byte comparison recognises the name without decoding it.
pub(crate) const AUTHORITY_HUFFMAN: [u8; 8] = [0xb8, 0x3b, 0x53, 0x39, 0xec, 0x32, 0x7d, 0x7f];

/// What an entry's name (and, for `:authority`, its value on the server) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Other,
    /// `:authority` with a value h2 accepts (possibly one this module put there).
    Authority,
    /// `:authority` with a value h2 rejects: only an empty one, which no same-size value can
    /// replace.
    BadAuthority,
}

/// What the `:authority` fields of a header block were, as the client sent them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sent {
    /// The block has none.
    Absent,
    /// Every one is a value h2 accepts.
    Accepted,
    /// At least one is a value h2 rejects (and is changed or dropped, where it can be).
    Rejected,
}

impl Sent {
    fn and(self, field: Sent) -> Sent {
        match (self, field) {
            (Sent::Rejected, _) | (_, Sent::Rejected) => Sent::Rejected,
            (Sent::Accepted, _) | (_, Sent::Accepted) => Sent::Accepted,
            _ => Sent::Absent,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    name_len: usize,
    size: usize,
    kind: Kind,
}

/// The changes to one header block, in block order: each replaces a range of the block with
/// bytes (never more) kept together in one buffer, so that an edit allocates nothing.
#[derive(Debug, Default)]
pub(crate) struct Edits {
    /// The range replaced, and where its replacement is in `bytes`.
    list: Vec<(Range<usize>, Range<usize>)>,
    bytes: Vec<u8>,
}

impl Edits {
    pub(crate) fn clear(&mut self) {
        self.list.clear();
        self.bytes.clear();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Appends the edited version of `fragment`, the part of the block from `at` on, where the
    /// edits before `next` are written already; moves `next` past those this one finishes. An
    /// edit that spans fragments puts its replacement (never longer) in the first of the places
    /// it had.
    pub(crate) fn apply(&self, fragment: &[u8], at: usize, next: &mut usize, out: &mut Vec<u8>) {
        let end = at + fragment.len();
        let mut p = at;
        while let Some((range, with)) = self.list.get(*next).filter(|(r, _)| r.start < end) {
            if p < range.start {
                out.extend_from_slice(&fragment[p - at..range.start - at]);
                p = range.start;
            }
            let stop = end.min(range.end);
            let from = with.start + (p - range.start).min(with.len());
            let to = with.start + (stop - range.start).min(with.len());
            if from < to {
                out.extend_from_slice(&self.bytes[from..to]);
            }
            p = stop;
            if range.end > end {
                return;
            }
            *next += 1;
        }
        out.extend_from_slice(&fragment[p - at..]);
    }

    fn remove(&mut self, range: Range<usize>) {
        let at = self.bytes.len();
        self.list.push((range, at..at));
    }
}

/// The client's dynamic table as the server's decoder sees it.
#[derive(Debug)]
pub(crate) struct Tracker {
    /// Newest first, as HPACK indexes them.
    entries: VecDeque<Entry>,
    size: usize,
    max_size: usize,
    /// A decoded string, or a placeholder host being encoded.
    scratch: Vec<u8>,
    /// A string Huffman-coded.
    coded: Vec<u8>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            entries: VecDeque::new(),
            size: 0,
            max_size: MAX_TABLE_SIZE,
            scratch: Vec::new(),
            coded: Vec::new(),
        }
    }
}

/// A string literal's place in the block.
struct Str {
    /// The whole representation: length prefix and data.
    repr: Range<usize>,
    data: Range<usize>,
    huffman: bool,
}

/// A cursor over one header block.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn byte(&mut self) -> Result<u8, Malformed> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or(Malformed("a header block ends inside a field"))?;
        self.pos += 1;
        Ok(b)
    }

    /// An HPACK integer with a `prefix`-bit prefix (RFC 7541 5.1), at most 5 bytes long as h2
    /// allows.
    fn int(&mut self, prefix: u8) -> Result<usize, Malformed> {
        let mask = (1usize << prefix) - 1;
        let mut value = usize::from(self.byte()?) & mask;
        if value < mask {
            return Ok(value);
        }
        for shift in [0, 7, 14, 21] {
            let b = self.byte()?;
            value += usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Malformed("an HPACK integer is longer than 5 bytes"))
    }

    fn string(&mut self) -> Result<Str, Malformed> {
        let start = self.pos;
        let huffman = self.buf.get(self.pos).is_some_and(|b| b & 0x80 == 0x80);
        let len = self.int(7)?;
        let data = self.pos..self.pos.saturating_add(len);
        if data.end > self.buf.len() {
            return Err(Malformed("a header block ends inside a string"));
        }
        self.pos = data.end;
        Ok(Str {
            repr: start..data.end,
            data,
            huffman,
        })
    }
}

impl Tracker {
    /// Reads one complete header block, updates the table model, and appends to `edits` (in
    /// block order) the changes that make every `:authority` acceptable to h2; says what the
    /// block's `:authority` fields were as sent.
    pub(crate) fn rewrite_block(
        &mut self,
        block: &[u8],
        edits: &mut Edits,
    ) -> Result<Sent, Malformed> {
        let mut r = Reader { buf: block, pos: 0 };
        let mut fields = false;
        let mut sent = Sent::Absent;
        while r.pos < block.len() {
            let start = r.pos;
            let first = block[start];
            let size_update = first & 0xe0 == 0x20;
            if size_update && fields {
                // RFC 7541 4.2, and h2: size updates only at the start of a block. Dropping the
                // fields before one would move it there.
                return Err(Malformed("a table size update after a field"));
            }
            fields |= !size_update;
            if first & 0x80 != 0 {
                // Indexed field. An empty `:authority` (static index 1, or an entry that kept
                // one) is dropped: a request without `:authority` is served like any other.
                let index = r.int(7)?;
                match self.lookup(index)?.1 {
                    Kind::BadAuthority => {
                        edits.remove(start..r.pos);
                        sent = Sent::Rejected;
                    }
                    // An entry this module replaced was rejected as sent; the first block
                    // that added it says so already.
                    Kind::Authority => sent = sent.and(Sent::Accepted),
                    Kind::Other => {}
                }
            } else if first & 0x40 != 0 {
                sent = sent.and(self.literal(&mut r, 6, true, edits)?);
            } else if first & 0x20 != 0 {
                // Dynamic table size update.
                let size = r.int(5)?;
                if size > MAX_TABLE_SIZE {
                    return Err(Malformed("a table size update exceeds 4096"));
                }
                self.max_size = size;
                self.evict(0);
            } else {
                // Without indexing (0000) or never indexed (0001): the same layout.
                sent = sent.and(self.literal(&mut r, 4, false, edits)?);
            }
        }
        Ok(sent)
    }

    fn literal(
        &mut self,
        r: &mut Reader<'_>,
        prefix: u8,
        indexing: bool,
        edits: &mut Edits,
    ) -> Result<Sent, Malformed> {
        let start = r.pos;
        let index = r.int(prefix)?;
        let (name_len, is_authority) = if index == 0 {
            let name = r.string()?;
            let bytes = &r.buf[name.data.clone()];
            let is_authority = if name.huffman {
                bytes == AUTHORITY_HUFFMAN
            } else {
                bytes == AUTHORITY
            };
            let len = match (is_authority, indexing) {
                (true, _) => AUTHORITY.len(),
                (false, true) => self.decoded_len(r.buf, &name)?,
                (false, false) => 0, // not needed: nothing is added to the table
            };
            (len, is_authority)
        } else {
            let (name_len, kind) = self.lookup(index)?;
            (name_len, kind != Kind::Other)
        };
        let value = r.string()?;

        let mut kind = Kind::Other;
        let mut value_len = 0;
        let mut sent = Sent::Absent;
        if is_authority {
            let decoded = self.decode_strict(r.buf, &value)?;
            value_len = decoded.len();
            kind = Kind::Authority;
            sent = Sent::Accepted;
            if http::uri::Authority::try_from(decoded).is_err() {
                sent = Sent::Rejected;
                if value_len == 0 {
                    if indexing {
                        // No non-empty value has the same size; keep it, and drop the later
                        // references to it instead.
                        kind = Kind::BadAuthority;
                    } else {
                        edits.remove(start..r.pos);
                    }
                } else {
                    let at = edits.bytes.len();
                    let room = value.repr.len();
                    if self.push_replacement(value_len, value.huffman, room, &mut edits.bytes) {
                        edits.list.push((value.repr.clone(), at..edits.bytes.len()));
                    }
                }
            }
        } else if indexing {
            value_len = self.decoded_len(r.buf, &value)?;
        }
        if indexing {
            self.insert(Entry {
                name_len,
                size: name_len + value_len + ENTRY_OVERHEAD,
                kind,
            });
        }
        Ok(sent)
    }

    /// The name length and kind of the entry at HPACK `index`.
    fn lookup(&self, index: usize) -> Result<(usize, Kind), Malformed> {
        match index {
            0 => Err(Malformed("HPACK index 0")),
            // Static index 1 is `:authority` with an empty value.
            1 => Ok((AUTHORITY.len(), Kind::BadAuthority)),
            2..=61 => Ok((STATIC_NAMES[index - 1].len(), Kind::Other)),
            _ => self
                .entries
                .get(index - 62)
                .map(|e| (e.name_len, e.kind))
                .ok_or(Malformed("an HPACK index beyond the table")),
        }
    }

    fn insert(&mut self, entry: Entry) {
        if entry.size > self.max_size {
            // RFC 7541 4.4: an entry larger than the table empties it and is not added.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(entry.size);
        self.size += entry.size;
        self.entries.push_front(entry);
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.entries.pop_back() {
                Some(e) => self.size -= e.size,
                None => break,
            }
        }
    }

    /// The decoded length of a string. A Huffman string is decoded leniently: one h2 rejects
    /// fails the connection in h2 anyway.
    fn decoded_len(&mut self, block: &[u8], s: &Str) -> Result<usize, Malformed> {
        if !s.huffman {
            return Ok(s.data.len());
        }
        self.scratch.clear();
        httlib_huffman::decode(
            &block[s.data.clone()],
            &mut self.scratch,
            httlib_huffman::DecoderSpeed::FiveBits,
        )
        .map_err(|_| Malformed("an invalid Huffman string"))?;
        Ok(self.scratch.len())
    }

    /// A string's content, with a Huffman string checked as strictly as h2 checks it (padding
    /// of at most 7 one bits, no EOS): the only valid coding of a string is its canonical one.
    fn decode_strict<'a>(&'a mut self, block: &'a [u8], s: &Str) -> Result<&'a [u8], Malformed> {
        let data = &block[s.data.clone()];
        if !s.huffman {
            return Ok(data);
        }
        self.decoded_len(block, s)?;
        self.coded.clear();
        huffman(&self.scratch, &mut self.coded);
        if self.coded != data {
            return Err(Malformed("an invalid Huffman string"));
        }
        Ok(&self.scratch)
    }

    /// Appends to `out` the string representation (length prefix and data) that replaces a bad
    /// `:authority` value of `len` (> 0) decoded bytes whose representation took `room` bytes:
    /// Huffman-coded when it was, and never longer. False (and nothing appended) only if
    /// nothing fits, which cannot happen for a bad value (see below).
    fn push_replacement(
        &mut self,
        len: usize,
        huffman_coded: bool,
        room: usize,
        out: &mut Vec<u8>,
    ) -> bool {
        self.scratch.clear();
        push_placeholder_host(len, &mut self.scratch);
        let data = if huffman_coded {
            self.coded.clear();
            huffman(&self.scratch, &mut self.coded);
            if int_len(self.coded.len(), 7) + self.coded.len() > room {
                // `a` has a 5-bit code, the shortest there is, so `a`s take the fewest bytes any
                // string of this length can. A bad value has at least one longer code (a string
                // of 5-bit symbols only, `0-2aceiost`, is a valid host), so this always fits.
                self.scratch.clear();
                self.scratch.resize(len, b'a');
                self.coded.clear();
                huffman(&self.scratch, &mut self.coded);
            }
            &self.coded
        } else {
            &self.scratch
        };
        if int_len(data.len(), 7) + data.len() > room {
            return false;
        }
        push_int(out, data.len(), 7, if huffman_coded { 0x80 } else { 0 });
        out.extend_from_slice(data);
        true
    }
}

/// Appends `s`, Huffman-coded.
fn huffman(s: &[u8], out: &mut Vec<u8>) {
    // Encoding cannot fail: every byte has a code.
    let _ = httlib_huffman::encode(s, out);
}

/// Appends a host name of exactly `len` (> 0) bytes, so that an entry holding it has the size
/// of one holding the bad value: `localhost`, `localhost.` (the same name, fully qualified), or
/// a name under `.localhost` (RFC 6761 6.3: loopback too); shorter ones are a run of `a`. The
/// value is never looked at by tokend; it only has to be an authority h2 accepts.
fn push_placeholder_host(len: usize, out: &mut Vec<u8>) {
    match len {
        9 => out.extend_from_slice(b"localhost"),
        10 => out.extend_from_slice(b"localhost."),
        11.. => {
            out.resize(out.len() + len - 10, b'a');
            out.extend_from_slice(b".localhost");
        }
        _ => out.resize(out.len() + len, b'a'),
    }
}

/// How many bytes [`push_int`] writes for `value`.
fn int_len(value: usize, prefix: u8) -> usize {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        return 1;
    }
    let mut rest = value - mask;
    let mut len = 2;
    while rest >= 0x80 {
        rest >>= 7;
        len += 1;
    }
    len
}

/// Appends an HPACK integer with a `prefix`-bit prefix, `flags` in the first byte's high bits.
pub(crate) fn push_int(out: &mut Vec<u8>, mut value: usize, prefix: u8, flags: u8) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    value -= mask;
    while value >= 0x80 {
        out.push(0x80 | (value & 0x7f) as u8);
        value >>= 7;
    }
    out.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_huffman_constant_is_the_canonical_coding() {
        let mut coded = Vec::new();
        huffman(AUTHORITY, &mut coded);
        assert_eq!(coded, AUTHORITY_HUFFMAN);
    }

    #[test]
    fn placeholders_have_the_length_asked_for_and_are_valid_authorities() {
        for len in 1..200 {
            let mut host = Vec::new();
            push_placeholder_host(len, &mut host);
            assert_eq!(host.len(), len);
            assert!(http::uri::Authority::try_from(&host[..]).is_ok(), "{len}");
        }
    }

    #[test]
    fn strings_of_five_bit_symbols_are_valid_authorities() {
        // The premise of the fallback in `replacement`.
        let five_bit = b"012aceiost";
        for &c in five_bit {
            let mut coded = Vec::new();
            huffman(&[c; 8], &mut coded);
            assert_eq!(coded.len(), 5, "{}", c as char);
        }
        assert!(http::uri::Authority::try_from(&five_bit[..]).is_ok());
    }

    #[test]
    fn integers_round_trip_and_overlong_ones_are_refused() {
        for prefix in [4, 5, 6, 7] {
            for value in [
                0,
                1,
                14,
                15,
                16,
                30,
                31,
                62,
                63,
                126,
                127,
                128,
                300,
                4096,
                1 << 20,
            ] {
                let mut buf = Vec::new();
                push_int(&mut buf, value, prefix, 0);
                let mut r = Reader { buf: &buf, pos: 0 };
                assert_eq!(r.int(prefix).unwrap(), value);
                assert_eq!(r.pos, buf.len());
                assert_eq!(int_len(value, prefix), buf.len());
            }
        }
        let mut r = Reader {
            buf: &[0x7f, 0xff, 0xff, 0xff, 0xff, 0x01],
            pos: 0,
        };
        assert!(r.int(7).is_err());
    }
}
