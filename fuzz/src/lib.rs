//! What each fuzz target does with one input, shared with the stable test that replays
//! `regressions/` and runs property tests (`tests/fuzz_inputs.rs` includes this file), so that
//! a crash found by the fuzzer is a test case as it stands.
//!
//! Every function must return without panicking, whatever the bytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A plausible "now" (2026-01-01) for parsers that compare with the clock.
pub const NOW: Duration = Duration::from_secs(1_767_225_600);

/// The token reply parser: the bytes as a 2xx body and as an error body. An input starting
/// with `J` is, after it, a JWT's claims: they become the payload of an `access_token` in an
/// otherwise ordinary reply, so the fuzzer reaches the claims parser without having to
/// discover base64.
pub fn reply(data: &[u8]) {
    let body = match data.strip_prefix(b"J") {
        Some(claims) => jwt_reply(claims),
        None => data.to_vec(),
    };
    let now = UNIX_EPOCH + NOW;
    let _ = tokend::testing::reply::parse_success(
        &body,
        Some("api:read"),
        Duration::from_secs(300),
        now,
    );
    let _ = tokend::testing::reply::parse_success(&body, None, Duration::ZERO, UNIX_EPOCH);
    // Whatever the provider echoes, a secret of the request never comes out of the error.
    let redactor = tokend::testing::Redactor::new([SECRET]);
    if let Some(error) = tokend::testing::reply::parse_error(&body, &redactor) {
        assert!(
            !error.to_string().to_ascii_lowercase().contains(SECRET),
            "a secret came through: {error}"
        );
    }
}

/// A secret the error parser is told to redact.
const SECRET: &str = "fuzz-secret-value";

/// A token reply whose access token is an unsigned JWT with `claims` as its payload.
pub fn jwt_reply(claims: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let token = format!("{}.{}.sig", b64(br#"{"alg":"none"}"#), b64(claims));
    format!(r#"{{"access_token":"{token}","token_type":"Bearer"}}"#).into_bytes()
}

/// The Retry-After parser, against a fixed clock and against one taken from the input's first
/// eight bytes (a host clock can be anywhere).
pub fn retry_after(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tokend::testing::parse_retry_after(text, UNIX_EPOCH + NOW);
    let _ = tokend::testing::parse_retry_after(text, UNIX_EPOCH);
    if let (Some(clock), Some(rest)) = (data.get(..8), data.get(8..)) {
        let secs = u64::from_le_bytes(clock.try_into().expect("eight bytes"));
        let now = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(secs));
        if let (Some(now), Ok(rest)) = (now, std::str::from_utf8(rest)) {
            let _ = tokend::testing::parse_retry_after(rest, now);
        }
    }
}

/// The config loader (parse, environment overrides, validation) on the bytes as TOML.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tokend::Config::from_toml_str(text, "fuzz.toml", []);
}
