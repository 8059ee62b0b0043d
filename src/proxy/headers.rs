//! What crosses the proxy: the target built from the route's base URL and the caller's path,
//! the headers that are end to end (RFC 9110 section 7.6.1), and what a 401 asks for.

use http::header::{self, HeaderMap, HeaderName};

/// Fields that concern one connection only (RFC 9110 section 7.6.1; `Proxy-Connection` and
/// `Keep-Alive` are not standard but still sent).
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "te",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "keep-alive",
    "proxy-connection",
];

/// Fields of a caller's request the proxy sets itself: `Host` is the upstream's, and the
/// credentials are the client's, whatever the caller sent.
const SET_BY_PROXY: &[&str] = &["host", "authorization", "dpop"];

/// A caller's request fields as forwarded: without hop-by-hop fields and those the proxy sets.
pub fn forwardable(headers: &mut HeaderMap) {
    remove_hop_by_hop(headers);
    for name in SET_BY_PROXY {
        headers.remove(*name);
    }
}

/// Removes the hop-by-hop fields of `headers`: the standard ones and every field the
/// `Connection` header names.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
}

/// Why the caller's path cannot be forwarded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    #[error(
        "the request names a host (absolute-form or CONNECT): this proxy sends every request to its route's upstream; send the path only"
    )]
    NotOriginForm,
    #[error(
        "the path has a dot segment (. or .., maybe percent-encoded), which would leave the route's base path"
    )]
    DotSegment,
}

/// The upstream URL for a request to `uri` on a route to `base`: the base path, then the
/// caller's path and query as sent. Dot segments are refused rather than resolved: resolved,
/// `/../admin` would leave the base path. An HTTP/1 request in absolute-form is refused: it
/// comes from a caller that took the route for a forward proxy (`HTTP_PROXY`), whose requests
/// for other hosts must not reach the upstream. HTTP/2 requests always name a scheme and an
/// authority (the proxy's own, as `Host` is), which are not looked at.
pub fn target(
    base: &url::Url,
    uri: &http::Uri,
    version: http::Version,
) -> Result<url::Url, TargetError> {
    if version < http::Version::HTTP_2 && (uri.scheme().is_some() || uri.authority().is_some()) {
        return Err(TargetError::NotOriginForm);
    }
    let path = uri.path();
    if !path.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    let dot = |segment: &str| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    };
    if path.split('/').any(dot) {
        return Err(TargetError::DotSegment);
    }
    let mut url = base.clone();
    let joined = format!("{}{path}", base.path().trim_end_matches('/'));
    url.set_path(&joined);
    url.set_query(uri.query());
    Ok(url)
}

/// What an upstream's 401 asks for, read from its `WWW-Authenticate` challenges (RFC 6750
/// section 3, RFC 9449 sections 7.1 and 9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// `error="invalid_token"`, or no error at all (a bare 401): a new token may do.
    InvalidToken,
    /// `error="use_dpop_nonce"`: the same token with a proof carrying the server's nonce.
    UseDpopNonce,
    /// Another error (`invalid_dpop_proof`, `insufficient_scope`...): no new token helps.
    Other,
}

/// Longest `WWW-Authenticate` text read: challenges are short, and the header is the
/// upstream's to make as long as it likes.
const MAX_CHALLENGE: usize = 8 * 1024;

pub fn challenge(headers: &HeaderMap) -> Challenge {
    let mut errors = Vec::new();
    let mut read = 0;
    for value in headers.get_all(header::WWW_AUTHENTICATE) {
        read += value.len();
        if read > MAX_CHALLENGE {
            break;
        }
        let Ok(text) = value.to_str() else { continue };
        errors.extend(error_params(text));
    }
    if errors.iter().any(|e| e == "use_dpop_nonce") {
        Challenge::UseDpopNonce
    } else if errors.is_empty() || errors.iter().any(|e| e == "invalid_token") {
        Challenge::InvalidToken
    } else {
        Challenge::Other
    }
}

/// The values of every `error` auth-param in a challenge list (RFC 9110 section 11.6.1):
/// `error=token` or `error="quoted"`, the name case-insensitive.
fn error_params(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = lower[from..].find("error") {
        let start = from + at;
        from = start + "error".len();
        let before = lower[..start].chars().next_back();
        if before.is_some_and(|c| !matches!(c, ' ' | ',' | '\t')) {
            continue;
        }
        let rest = lower[from..].trim_start_matches([' ', '\t']);
        let Some(value) = rest.strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start_matches([' ', '\t']);
        let value = match value.strip_prefix('"') {
            Some(quoted) => quoted.split('"').next().unwrap_or(""),
            None => value
                .split(|c: char| c == ',' || c.is_whitespace())
                .next()
                .unwrap_or(""),
        };
        found.push(value.to_string());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_proxy_set_fields_are_removed() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, X-Hop"),
            ("keep-alive", "timeout=5"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("host", "evil.example"),
            ("authorization", "Bearer caller-token"),
            ("dpop", "caller-proof"),
            ("x-end-to-end", "1"),
            ("accept", "application/json"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        let mut response = h.clone();
        let names = |h: &HeaderMap| {
            let mut names: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
            names.sort();
            names
        };
        forwardable(&mut h);
        assert_eq!(names(&h), ["accept", "x-end-to-end"]);
        remove_hop_by_hop(&mut response);
        assert_eq!(
            names(&response),
            ["accept", "authorization", "dpop", "host", "x-end-to-end"]
        );
    }

    #[test]
    fn the_target_is_the_base_path_and_the_callers_path() {
        let base = url::Url::parse("https://api.example.com/v1/").unwrap();
        let h1 = http::Version::HTTP_11;
        let t = |uri: &str| target(&base, &uri.parse().unwrap(), h1).map(String::from);
        assert_eq!(
            t("/users?id=7").unwrap(),
            "https://api.example.com/v1/users?id=7"
        );
        assert_eq!(t("/").unwrap(), "https://api.example.com/v1/");
        let root = url::Url::parse("http://127.0.0.1:9000").unwrap();
        assert_eq!(
            target(&root, &"/a/b".parse().unwrap(), h1)
                .unwrap()
                .as_str(),
            "http://127.0.0.1:9000/a/b"
        );
        for bad in ["/../admin", "/a/%2e%2E/x", "/./a", "/a/.."] {
            assert_eq!(t(bad), Err(TargetError::DotSegment), "{bad}");
        }
        assert_eq!(t("http://evil.example/x"), Err(TargetError::NotOriginForm));
        assert_eq!(t("evil.example:443"), Err(TargetError::NotOriginForm));
        // HTTP/2's :scheme and :authority are the proxy's own.
        let h2 = target(
            &base,
            &"http://proxy/x?y".parse().unwrap(),
            http::Version::HTTP_2,
        );
        assert_eq!(h2.unwrap().as_str(), "https://api.example.com/v1/x?y");
        // A dot inside a segment is a name, not a dot segment.
        assert!(t("/a/.well-known/x..y").is_ok());
    }

    #[test]
    fn challenges_say_what_a_401_asks_for() {
        let c = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::WWW_AUTHENTICATE, v.parse().unwrap());
            }
            challenge(&h)
        };
        assert_eq!(c(&[]), Challenge::InvalidToken);
        assert_eq!(c(&["Bearer"]), Challenge::InvalidToken);
        assert_eq!(
            c(&[r#"Bearer realm="x", error="invalid_token""#]),
            Challenge::InvalidToken
        );
        assert_eq!(c(&["Bearer error=invalid_token"]), Challenge::InvalidToken);
        assert_eq!(
            c(&[r#"DPoP error="use_dpop_nonce", error_description="fresh nonce""#]),
            Challenge::UseDpopNonce
        );
        assert_eq!(
            c(&[
                r#"Bearer error="insufficient_scope""#,
                r#"DPoP algs="ES256""#
            ]),
            Challenge::Other
        );
        assert_eq!(c(&[r#"DPoP ERROR="invalid_dpop_proof""#]), Challenge::Other);
        // error_description is not the error.
        assert_eq!(
            c(&[r#"Bearer error_description="invalid_token""#]),
            Challenge::InvalidToken
        );
        let long = format!(r#"Bearer realm="{}""#, "x".repeat(10_000));
        assert_eq!(
            c(&[&long, r#"Bearer error="insufficient_scope""#]),
            Challenge::InvalidToken
        );
    }
}
