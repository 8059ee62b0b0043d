//! What a token endpoint's text may show once it leaves tokend's hands.
//!
//! A hostile or careless endpoint can echo what it was sent (the client secret, the Basic
//! header, the refresh token) or what it issued (tokens) in its error text, token_type or
//! scopes; and it can put control characters there that forge log lines or move a terminal's
//! cursor. Every provider string goes through [`Redactor::clean`] before it is logged, stored
//! in `last_error`, returned to a caller or used in a metric: every credential of the request
//! is cut out, in every form it travelled in or may be echoed in, control characters are
//! escaped, and the length is bounded.

use base64::Engine;

use crate::secret::{ExposeSecret, SecretString};

/// What replaces a credential in provider text.
pub const REDACTED: &str = "[redacted]";

/// The credentials of one request, in every form a provider may echo them in.
#[derive(Clone, Default)]
pub struct Redactor {
    /// ASCII-lowercased (matching ignores ASCII case: a provider may re-encode percent escapes
    /// in lower case), longest first, so that a whole Basic header goes before its parts.
    needles: Vec<SecretString>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Redactor({} forms)", self.needles.len())
    }
}

impl Redactor {
    /// A redactor for `secrets` (tokens, client secrets, assertions), see [`Redactor::add`].
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut r = Redactor::default();
        for s in secrets {
            r.add(s);
        }
        r
    }

    /// Adds a secret as sent and as a provider may echo it: plain, form-encoded (with `+` and
    /// with `%20` for a space), and base64 (standard and URL-safe).
    pub fn add(&mut self, secret: &str) {
        let form: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        self.push(secret.to_string());
        self.push(form.replace('+', "%20"));
        self.push(form);
        for b64 in base64_forms(secret) {
            self.push(b64);
        }
    }

    /// Adds client credentials as `client_secret_basic` sends them: the secret itself (see
    /// [`Redactor::add`]), base64 of `id:secret` raw and RFC 6749 form-encoded (a space as
    /// `%20`, as sent, and as `+`), and the whole `Authorization` header value both ways.
    pub fn add_client_credentials(&mut self, client_id: &str, secret: &str) {
        use super::basic::{Sent, authorization, pair};
        self.add(secret);
        let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        for pair in [
            pair(Sent::Raw, client_id, secret),
            pair(Sent::Form, client_id, secret),
            format!("{}:{}", encode(client_id), encode(secret)),
        ] {
            for b64 in base64_forms(&pair) {
                self.push(b64);
            }
        }
        for sent in [Sent::Form, Sent::Raw] {
            self.push(authorization(sent, client_id, secret));
        }
    }

    fn push(&mut self, needle: String) {
        if needle.is_empty() {
            return;
        }
        let needle = needle.to_ascii_lowercase();
        if self.needles.iter().any(|n| n.expose_secret() == needle) {
            return;
        }
        let at = self
            .needles
            .iter()
            .position(|n| n.expose_secret().len() < needle.len())
            .unwrap_or(self.needles.len());
        self.needles.insert(at, SecretString::from(needle));
    }

    /// Whether `text` contains any of the credentials.
    pub fn finds(&self, text: &str) -> bool {
        let lower = text.to_ascii_lowercase();
        self.needles
            .iter()
            .any(|n| lower.contains(n.expose_secret()))
    }

    /// `text` with every credential replaced by [`REDACTED`].
    pub fn redact(&self, text: &str) -> String {
        // ASCII lowercasing keeps every byte offset, so matches in `lower` are ranges of `text`
        // (on character boundaries: a needle is whole UTF-8).
        let lower = text.to_ascii_lowercase();
        let mut ranges: Vec<(usize, usize)> = self
            .needles
            .iter()
            .flat_map(|n| {
                let n = n.expose_secret();
                lower.match_indices(n).map(|(at, _)| (at, at + n.len()))
            })
            .collect();
        if ranges.is_empty() {
            return text.to_string();
        }
        ranges.sort_unstable();
        let mut out = String::with_capacity(text.len());
        // Text before `done` is written; `current` is the merged range being redacted.
        let mut done = 0;
        let mut current = ranges[0];
        for (start, end) in ranges.into_iter().skip(1) {
            if start <= current.1 {
                current.1 = current.1.max(end);
            } else {
                out.push_str(&text[done..current.0]);
                out.push_str(REDACTED);
                done = current.1;
                current = (start, end);
            }
        }
        out.push_str(&text[done..current.0]);
        out.push_str(REDACTED);
        out.push_str(&text[current.1..]);
        out
    }

    /// Provider text made fit for a log line, `last_error`, a gRPC message or a metric:
    /// credentials redacted, then control characters escaped, then at most `max_chars`
    /// characters (an ellipsis marks a cut).
    pub fn clean(&self, text: &str, max_chars: usize) -> String {
        bound(&escape(&self.redact(text)), max_chars)
    }
}

/// Standard and URL-safe base64, padded (so that the padding goes too) and not (for an echo
/// that dropped it).
fn base64_forms(s: &str) -> [String; 4] {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [
        STANDARD.encode(s),
        STANDARD_NO_PAD.encode(s),
        URL_SAFE.encode(s),
        URL_SAFE_NO_PAD.encode(s),
    ]
}

/// Characters that must not reach a log line or a terminal as they are: C0 and C1 controls
/// and DEL (line breaks forge log lines; ESC and CSI move the cursor or recolour), line and
/// paragraph separators, and the bidirectional overrides that make text read differently from
/// what it is. tracing-subscriber 0.3.23 escapes only ESC, BEL, BS, FF, DEL and C1, and only
/// in the message (not CR, LF or TAB, and not in other fields); its JSON output escapes C0
/// but not DEL, C1 or the rest.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}')
        || ('\u{202a}'..='\u{202e}').contains(&c)
        || ('\u{2066}'..='\u{2069}').contains(&c)
}

/// `text` with [`needs_escape`] characters written as Rust escapes (`\n`, `\u{1b}`).
pub fn escape(text: &str) -> String {
    if !text.chars().any(needs_escape) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max_chars` characters of `text`, with `…` when cut.
fn bound(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        None => text.to_string(),
        Some((at, _)) => format!("{}…", &text[..at]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_of_the_client_secret_is_redacted() {
        let mut r = Redactor::default();
        r.add_client_credentials("my app", "s3 cr+t/é");
        let header = super::super::basic_authorization("my app", "s3 cr+t/é");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        for echoed in [
            "s3 cr+t/é".to_string(),
            "S3 CR+T/é".to_string(),
            "s3+cr%2Bt%2F%C3%A9".to_string(),
            "s3%20cr%2bt%2f%c3%a9".to_string(),
            b64("s3 cr+t/é"),
            b64("my app:s3 cr+t/é"),
            b64("my+app:s3+cr%2Bt%2F%C3%A9"),
            b64("my%20app:s3%20cr%2Bt%2F%C3%A9"),
            super::super::basic::authorization(
                super::super::basic::Sent::Raw,
                "my app",
                "s3 cr+t/é",
            ),
            header.clone(),
            header.trim_start_matches("Basic ").to_string(),
        ] {
            let text = format!("bad client, you sent <{echoed}>!");
            let shown = r.redact(&text);
            assert_eq!(shown, "bad client, you sent <[redacted]>!", "{echoed}");
            assert!(r.finds(&text));
        }
        assert!(!r.finds("nothing here"));
        assert_eq!(r.redact("nothing here"), "nothing here");
    }

    #[test]
    fn overlapping_and_adjacent_matches_leave_nothing() {
        let r = Redactor::new(["abcdef", "cdefgh", "xyz"]);
        assert_eq!(r.redact("abcdefgh"), "[redacted]");
        assert_eq!(r.redact("xyzxyz-abcdef."), "[redacted]-[redacted].");
        assert_eq!(r.redact("-xyz"), "-[redacted]");
        assert!(!format!("{r:?}").contains("abc"));
    }

    #[test]
    fn clean_redacts_before_cutting_and_escapes_controls() {
        let r = Redactor::new(["topsecret"]);
        // A cut after redaction cannot leave half a secret behind.
        assert_eq!(r.clean("xxtopsecret", 3), "xx[…");
        assert_eq!(
            r.clean("line\r\nINFO forged\x1b[2J\u{9b}\u{202e}", 100),
            "line\\r\\nINFO forged\\u{1b}[2J\\u{9b}\\u{202e}"
        );
        assert_eq!(r.clean("héllo", 100), "héllo");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn no_secret_survives_and_nothing_panics(
                // Not `[` or `]`: next to the marker they could spell a secret again.
                secret in "[ -Z^-~é]{1,12}",
                before in ".{0,20}",
                after in ".{0,20}",
                max in 1usize..60,
            ) {
                let mut r = Redactor::default();
                r.add_client_credentials("id", &secret);
                prop_assume!(!REDACTED.contains(&secret.to_ascii_lowercase()));
                let text = format!("{before}{secret}{after}");
                let shown = r.redact(&text);
                prop_assert!(!shown.to_ascii_lowercase().contains(&secret.to_ascii_lowercase()));
                let cleaned = r.clean(&text, max);
                prop_assert!(cleaned.chars().count() <= max + 1);
                prop_assert!(!cleaned.chars().any(needs_escape));
            }
        }
    }
}
