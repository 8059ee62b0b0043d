//! What a client's name may be: the config refuses other names at load, and the service refuses
//! them before a caller's text goes anywhere (a log line, an error message).

/// The longest client name a config can hold; callers naming a longer one are refused before
/// the name goes anywhere (a log line, an error message).
pub const MAX_CLIENT_NAME: usize = 128;

/// Whether `name` can be a configured client's name: 1 to [`MAX_CLIENT_NAME`] ASCII letters,
/// digits, '-', '_' and '.'.
pub fn is_client_name(name: &str) -> bool {
    (1..=MAX_CLIENT_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_names_are_short_and_plain() {
        assert!(is_client_name("billing-svc_2.prod"));
        assert!(is_client_name(&"a".repeat(MAX_CLIENT_NAME)));
        for bad in ["", "a b", "a/b", "bill\ning", "b\u{e9}", "a\0"] {
            assert!(!is_client_name(bad), "{bad:?}");
        }
        assert!(!is_client_name(&"a".repeat(MAX_CLIENT_NAME + 1)));
    }
}
