//! Secrets (client secrets, refresh tokens) and access tokens: read with care, held in types whose
//! `Debug` never shows them, and written durably.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub use secrecy::{ExposeSecret, SecretString};

use crate::atomic_file;

/// Secret files larger than this are not secrets but a mistake (a certificate bundle, a log).
const MAX_SECRET_FILE: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("{path}: is {size} bytes, larger than the {MAX_SECRET_FILE}-byte limit for a secret")]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{path}: is empty")]
    Empty { path: PathBuf },
    #[error("{path}: is not UTF-8 text")]
    NotText { path: PathBuf },
    #[error(
        "{path}: is readable by other users (mode {mode:04o}); a secret file must not be: chmod 600 {path}"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("environment variable {var} is not set or empty")]
    MissingEnv { var: String },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Checks that a secret file exists and is readable as one, without keeping its content.
pub fn check_file(path: &Path) -> Result<(), SecretError> {
    read_file(path).map(drop)
}

/// Reads a secret file: a regular file of bounded size, UTF-8, trailing newline dropped (editors
/// and `echo` add one; no secret ends in one).
pub fn read_file(path: &Path) -> Result<SecretString, SecretError> {
    let read_err = |source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    };
    // O_NOFOLLOW is not used: operators and systemd credentials legitimately use symlinks.
    let file = std::fs::File::open(path).map_err(read_err)?;
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    if exposed(path, &meta) {
        return Err(SecretError::Exposed {
            path: path.to_path_buf(),
            mode: meta.mode() & 0o7777,
        });
    }
    if meta.size() > MAX_SECRET_FILE {
        return Err(SecretError::TooLarge {
            path: path.to_path_buf(),
            size: meta.size(),
        });
    }
    let mut bytes = Vec::with_capacity(meta.size() as usize);
    file.take(MAX_SECRET_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    let text = String::from_utf8(bytes).map_err(|_| SecretError::NotText {
        path: path.to_path_buf(),
    })?;
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(SecretString::from(trimmed.to_string()))
}

/// Whether users other than the daemon's could read the file: any permission for others, or
/// group read unless the group is the daemon's own (the usual `root:tokend 0640`). Files that
/// systemd passed as credentials are private to the service by construction.
fn exposed(path: &Path, meta: &std::fs::Metadata) -> bool {
    if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY")
        && path.starts_with(dir)
    {
        return false;
    }
    let mode = meta.mode();
    let group_is_ours = meta.gid() == nix::unistd::getegid().as_raw();
    mode & 0o007 != 0 || (mode & 0o040 != 0 && !group_is_ours)
}

/// Reads a secret from an environment variable.
pub fn read_env(var: &str) -> Result<SecretString, SecretError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
        _ => Err(SecretError::MissingEnv {
            var: var.to_string(),
        }),
    }
}

/// Replaces `path` with `content` and a newline, mode 0600, so that a crash at any moment
/// leaves either the old or the new content, in a directory no one but root, the daemon's user
/// and the directory's owner can write (see [`crate::atomic_file`]).
pub fn write_file_durably(path: &Path, content: &str) -> Result<(), SecretError> {
    atomic_file::replace(
        path,
        format!("{content}\n").as_bytes(),
        atomic_file::Perms::PRIVATE,
        &atomic_file::Trust::state(),
        atomic_file::Durability::Durable,
    )
    .map_err(|source| SecretError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// An access token. Its `Debug` shows only a fingerprint, so it can sit in structs that are
/// logged or printed without leaking.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(String);

impl AccessToken {
    pub fn new(token: String) -> Self {
        Self(token)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, stable, non-reversible identifier for logs: the first 8 hex digits of SHA-256.
    pub fn fingerprint(&self) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        digest[..4].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken(sha256:{}..)", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_file_is_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "pa:ss+wörd%\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_file(&path).unwrap().expose_secret(), "pa:ss+wörd%");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(read_file(&path), Err(SecretError::Empty { .. })));
        std::fs::write(&path, vec![b'x'; 70_000]).unwrap();
        assert!(matches!(
            read_file(&path),
            Err(SecretError::TooLarge { .. })
        ));
        assert!(matches!(
            read_file(dir.path()),
            Err(SecretError::NotAFile { .. })
        ));
    }

    #[test]
    fn files_readable_by_others_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "secret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        let err = read_file(&path).unwrap_err();
        assert!(matches!(err, SecretError::Exposed { mode: 0o604, .. }));
        assert!(err.to_string().contains("chmod 600"), "{err}");
        assert!(!err.to_string().contains("secret\n"));
        // Group-readable is fine when the group is the daemon's own.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_file(&path).is_ok());
    }

    #[test]
    fn durable_write_replaces_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rt");
        std::fs::write(&path, "old").unwrap();
        write_file_durably(&path, "new-token").unwrap();
        assert_eq!(read_file(&path).unwrap().expose_secret(), "new-token");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn token_debug_hides_the_token() {
        let t = AccessToken::new("eyJhbGciOi.secret-part.sig".into());
        let shown = format!("{t:?}");
        assert!(!shown.contains("secret-part"), "{shown}");
        assert!(shown.contains(&t.fingerprint()));
    }
}
