//! File modes as the settings write them: octal text such as "0660" (or "0o660"), permission
//! bits only, so that a setting cannot ask for setuid, setgid or sticky bits.

/// Text that is not an octal permission mode; `example` is a mode that would fit the setting.
#[derive(Debug, thiserror::Error)]
#[error("{text:?} is not an octal file mode such as \"{example}\"")]
pub struct BadMode {
    text: String,
    example: &'static str,
}

/// The mode `text` writes; the error shows `example`.
pub fn parse(text: &str, example: &'static str) -> Result<u32, BadMode> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| BadMode {
            text: text.to_string(),
            example,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn octal_permission_bits_only() {
        assert_eq!(parse("0660", "0660").unwrap(), 0o660);
        assert_eq!(parse("0o600", "0600").unwrap(), 0o600);
        assert_eq!(parse("777", "0600").unwrap(), 0o777);
        for bad in ["rw", "", "0o", "4755", "0688", "-1"] {
            let e = parse(bad, "0640").unwrap_err().to_string();
            assert_eq!(
                e,
                format!("{bad:?} is not an octal file mode such as \"0640\"")
            );
        }
    }
}
