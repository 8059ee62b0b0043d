//! Helpers of the unit tests alone (a leaf: it imports nothing of the crate, so that any
//! module's tests may use it).

/// Runs `openssl ARGS` in `dir` and returns what it printed: the unit tests that need keys or
/// certificates made by another implementation make them with it.
pub fn openssl(dir: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `openssl` ({e}): install OpenSSL's command line tool (Debian: openssl)"
            )
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
