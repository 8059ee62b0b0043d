//! Server-provided nonces (RFC 9449 section 8): `DPoP-Nonce` is whatever the server, or anyone
//! in its place, sends, so it is checked before it is signed into a proof or logged.

use super::DpopError;

/// The longest nonce accepted. RFC 9449 sets no limit; servers send tens of bytes (an
/// encrypted timestamp), and each one is copied into every proof header that follows.
const MAX_NONCE: usize = 512;

/// `nonce = 1*NQCHAR` (RFC 9449 section 8), at most [`MAX_NONCE`] bytes.
pub(super) fn check(nonce: &str) -> Result<(), DpopError> {
    if nonce.is_empty() {
        return Err(DpopError::Nonce("is empty"));
    }
    if nonce.len() > MAX_NONCE {
        return Err(DpopError::Nonce(
            "is longer than the 512 bytes tokend accepts",
        ));
    }
    if !nonce.bytes().all(is_nqchar) {
        return Err(DpopError::Nonce(
            "holds a character RFC 9449 does not allow in a nonce (space, quote, backslash, control or non-ASCII)",
        ));
    }
    Ok(())
}

/// NQCHAR = %x21 / %x23-5B / %x5D-7E: visible ASCII but `"` and `\`.
fn is_nqchar(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x5b | 0x5d..=0x7e)
}

/// The nonce a server asks for in its `DPoP-Nonce` response header, if it sent exactly one
/// that [`check`] accepts; `None` otherwise (absent, repeated, or not a nonce).
pub fn nonce_from_headers(headers: &http::HeaderMap) -> Option<String> {
    let mut values = headers.get_all("dpop-nonce").iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let nonce = value.to_str().ok()?;
    check(nonce).ok()?;
    Some(nonce.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    /// The nonce of RFC 9449's examples (section 8, figure 21).
    const RFC_NONCE: &str = "eyJ7S_zG.eyJH0-Z.HX4w-7v";

    #[test]
    fn nonces_are_nqchars_of_bounded_length() {
        assert!(check(RFC_NONCE).is_ok());
        assert!(check("!#[]~").is_ok(), "the edges of the NQCHAR ranges");
        assert!(check(&"n".repeat(MAX_NONCE)).is_ok());
        for bad in ["", "a b", "a\"b", "a\\b", "a\tb", "a\nb", "a\u{7f}", "é"] {
            let err = check(bad).unwrap_err();
            assert!(!err.to_string().contains(bad) || bad.is_empty(), "{err}");
        }
        assert!(check(&"n".repeat(MAX_NONCE + 1)).is_err());
    }

    #[test]
    fn the_header_is_taken_only_when_there_is_one_valid_nonce() {
        let mut headers = HeaderMap::new();
        assert_eq!(nonce_from_headers(&headers), None);
        headers.insert("DPoP-Nonce", HeaderValue::from_static(RFC_NONCE));
        assert_eq!(nonce_from_headers(&headers).as_deref(), Some(RFC_NONCE));
        headers.append("dpop-nonce", HeaderValue::from_static("other"));
        assert_eq!(nonce_from_headers(&headers), None, "two nonces: which one?");
        for bad in [
            HeaderValue::from_static("a b"),
            HeaderValue::from_static("\"quoted\""),
            HeaderValue::from_bytes("é".as_bytes()).unwrap(),
            HeaderValue::from_str(&"n".repeat(MAX_NONCE + 1)).unwrap(),
            HeaderValue::from_static(""),
        ] {
            headers.insert("dpop-nonce", bad);
            assert_eq!(nonce_from_headers(&headers), None);
        }
    }
}
