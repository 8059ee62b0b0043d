//! Secrets (client secrets, refresh tokens) and access tokens: read with care, held in types whose
//! `Debug` never shows them, and written durably.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::host::offload::{self, Stalled};

pub use secrecy::{ExposeSecret, SecretString};

use crate::host::{atomic_file, file_kind, io_error};

/// Secret files larger than this are not secrets but a mistake (a certificate bundle, a log).
const MAX_SECRET_FILE: u64 = 64 * 1024;

/// How long the daemon waits for one secret file: a local read takes microseconds, so this is
/// a file system that hangs (a dead NFS server), and the request fails as transient instead.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: is {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error(
        "{path}: is a symbolic link in a directory others can write; there a secret file must be the file itself (name its target in the config)"
    )]
    Symlink { path: PathBuf },
    #[error(
        "{path}: is owned by uid {uid}; a secret file must be owned by root or tokend's user (uid {ours}): chown {ours} {path}"
    )]
    Owner { path: PathBuf, uid: u32, ours: u32 },
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
    #[error("{path}: reading it {source} (is it on a hung file system?)")]
    Stalled { path: PathBuf, source: Stalled },
    #[error("environment variable {var} is not set or empty")]
    MissingEnv { var: String },
    #[error("{path}: cannot write: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl SecretError {
    /// Whether this may pass by itself (descriptors or memory short, an I/O error, a hung
    /// read), so the request is retried with backoff. Only a file that is missing, unreadable
    /// to tokend, of the wrong kind, owner or mode, or not a secret at all needs an operator.
    pub fn is_transient(&self) -> bool {
        match self {
            SecretError::Read { source, .. } | SecretError::Write { source, .. } => {
                !io_error::needs_operator(source)
            }
            SecretError::Stalled { .. } => true,
            SecretError::NotAFile { .. }
            | SecretError::Symlink { .. }
            | SecretError::Owner { .. }
            | SecretError::TooLarge { .. }
            | SecretError::Empty { .. }
            | SecretError::NotText { .. }
            | SecretError::Exposed { .. }
            | SecretError::MissingEnv { .. } => false,
        }
    }
}

/// Checks that a secret file exists and is readable as one, without keeping its content.
pub fn check_file(path: &Path) -> Result<(), SecretError> {
    read_file(path).map(drop)
}

/// [`read_file`] for the daemon: on the blocking pool, within [`READ_TIMEOUT`], so that no
/// file can hold up an async worker.
pub async fn read_file_async(path: &Path) -> Result<SecretString, SecretError> {
    let owned = path.to_path_buf();
    offload::run(path, READ_TIMEOUT, move || read_file(&owned))
        .await
        .map_err(|source| SecretError::Stalled {
            path: path.to_path_buf(),
            source,
        })?
}

/// Reads a secret file: a regular file of bounded size, owned by root or tokend's user, UTF-8,
/// trailing newline dropped (editors and `echo` add one; no secret ends in one).
///
/// Opened with `O_NONBLOCK` (a FIFO or device never blocks the open) and `O_NOCTTY`, checked
/// with `fstat` before anything is read. Outside `$CREDENTIALS_DIRECTORY` the last component
/// may be a symlink only in a directory that no one but root and tokend's user can write (where
/// no one else could have placed it); inside it, where systemd may place links, it may be.
/// The path is normalised first (`a/../b` is `b`) and the normalised path is opened, so `..`
/// cannot leave the credentials directory while the check believes it is inside.
pub fn read_file(path: &Path) -> Result<SecretString, SecretError> {
    let read_err = |source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    };
    let normal = normalise(path);
    let credential = in_credentials_directory(&normal);
    let mut flags = nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_NOCTTY;
    if !credential {
        flags |= nix::fcntl::OFlag::O_NOFOLLOW;
    }
    // std opens with O_CLOEXEC.
    let open = |flags: nix::fcntl::OFlag| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits())
            .open(&normal)
    };
    let file = match open(flags) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(nix::errno::Errno::ELOOP as i32) => {
            let link = std::fs::symlink_metadata(&normal).is_ok_and(|m| m.is_symlink());
            if !link {
                return Err(read_err(e));
            }
            // Only root or tokend's user could have placed a link there: following it is their
            // choice, as Kubernetes' kubelet makes it for every mounted file (`token ->
            // ..data/token`, `..data` swapped at each rotation).
            if !normal.parent().is_some_and(trusted_directory) {
                return Err(SecretError::Symlink {
                    path: path.to_path_buf(),
                });
            }
            open(flags & !nix::fcntl::OFlag::O_NOFOLLOW).map_err(read_err)?
        }
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile {
            path: path.to_path_buf(),
            kind: file_kind::of(&meta.file_type()),
        });
    }
    let ours = nix::unistd::geteuid().as_raw();
    if meta.uid() != 0 && meta.uid() != ours {
        return Err(SecretError::Owner {
            path: path.to_path_buf(),
            uid: meta.uid(),
            ours,
        });
    }
    if !credential && exposed(&meta) {
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
    if bytes.len() as u64 > MAX_SECRET_FILE {
        return Err(SecretError::TooLarge {
            path: path.to_path_buf(),
            size: bytes.len() as u64,
        });
    }
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

/// `path` with `.` and `..` resolved by name, the way the config reads, not the way the kernel
/// would through a symlinked directory.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether a normalised path lies inside `$CREDENTIALS_DIRECTORY`: the directory systemd
/// fills with the service's credentials, private to it and not writable by anyone.
fn in_credentials_directory(normal: &Path) -> bool {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .map(|dir| normalise(Path::new(&dir)))
        .is_some_and(|dir| dir.is_absolute() && normal.starts_with(&dir) && normal != dir)
}

/// Whether no one but root and tokend's user can create or replace entries in `dir`: owned by
/// one of them and either writable by neither group nor others (sticky or not) or on a
/// read-only mount. The second is how Kubernetes mounts a projected volume into a container:
/// its root is `drwxrwxrwt root root` on a tmpfs the kubelet alone writes, from outside.
fn trusted_directory(dir: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let read_only = nix::sys::statvfs::statvfs(dir)
        .is_ok_and(|v| v.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY));
    meta.is_dir()
        && trusts(
            meta.uid(),
            meta.mode(),
            read_only,
            nix::unistd::geteuid().as_raw(),
        )
}

/// The rule of [`trusted_directory`] on a directory's owner, mode and mount.
fn trusts(owner: u32, mode: u32, read_only: bool, ours: u32) -> bool {
    (owner == 0 || owner == ours) && (read_only || mode & 0o022 == 0)
}

/// Whether users other than the daemon's could read the file: any permission for others, or
/// group read unless the group is the daemon's own (the usual `root:tokend 0640`).
fn exposed(meta: &std::fs::Metadata) -> bool {
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
/// and the directory's owner can write (see [`crate::host::atomic_file`]).
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

/// A short, stable, non-reversible identifier of a token for logs and messages: the first 8
/// hex digits of its SHA-256.
pub fn fingerprint(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// An access token. Its `Debug` shows only a fingerprint, so it can sit in structs that are
/// logged or printed without leaking. Clones share the text: the published token and the copy
/// the token source keeps to redact echoes of it are one allocation, not two (a 1 KiB token
/// times 10,000 clients).
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(std::sync::Arc<str>);

impl AccessToken {
    pub fn new(token: String) -> Self {
        Self(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// A short, stable, non-reversible identifier for logs ([`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.0)
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
    fn special_files_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        // No writer ever opens it: a blocking open would wait for ever.
        let err = read_file(&fifo).unwrap_err();
        assert!(
            matches!(err, SecretError::NotAFile { kind: "a FIFO", .. }),
            "{err}"
        );
        assert!(!err.is_transient());
        let err = read_file(Path::new("/dev/null")).unwrap_err();
        assert!(err.to_string().contains("a character device"), "{err}");
    }

    #[test]
    fn a_symlink_is_refused_where_others_could_have_placed_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, "secret\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = read_file(&link).unwrap_err();
        assert!(matches!(err, SecretError::Symlink { .. }), "{err}");
        assert!(!err.is_transient());
        // The same file through `..` is the file itself, opened by its normalised path.
        let dotted = dir.path().join("sub/../real");
        assert_eq!(read_file(&dotted).unwrap().expose_secret(), "secret");
    }

    #[test]
    fn kubernetes_mounted_files_are_read_through_their_links() {
        // The kubelet's atomic writer: `token -> ..data/token`, `..data -> ..TIMESTAMP`, in a
        // directory only it (root) writes.
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let write = |version: &str, token: &str| {
            let versioned = dir.path().join(version);
            std::fs::create_dir(&versioned).unwrap();
            let file = versioned.join("token");
            std::fs::write(&file, token).unwrap();
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
            let tmp = dir.path().join("..data_tmp");
            std::os::unix::fs::symlink(version, &tmp).unwrap();
            std::fs::rename(&tmp, dir.path().join("..data")).unwrap();
        };
        write("..2026_12_02_08_00_00.1", "eyJ.first.sig\n");
        let token = dir.path().join("token");
        std::os::unix::fs::symlink("..data/token", &token).unwrap();
        assert_eq!(read_file(&token).unwrap().expose_secret(), "eyJ.first.sig");
        write("..2026_12_02_08_48_00.2", "eyJ.second.sig\n");
        assert_eq!(read_file(&token).unwrap().expose_secret(), "eyJ.second.sig");
        // The target is still held to the rules: readable by others is refused.
        let newest = dir.path().join("..2026_12_02_08_48_00.2/token");
        std::fs::set_permissions(&newest, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            read_file(&token),
            Err(SecretError::Exposed { mode: 0o644, .. })
        ));
        // A directory others may write is not trusted with links, sticky or not.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o775)).unwrap();
        assert!(matches!(
            read_file(&token),
            Err(SecretError::Symlink { .. })
        ));
    }

    #[test]
    fn a_read_only_mount_is_trusted_with_links_whatever_its_mode() {
        // Kubernetes' projected volume root, as a container sees it.
        assert!(trusts(0, 0o41777, true, 1000));
        assert!(!trusts(0, 0o41777, false, 1000));
        assert!(trusts(1000, 0o40755, false, 1000));
        assert!(!trusts(1000, 0o40775, false, 1000));
        // Read-only or not, a directory someone else owns is theirs to fill.
        assert!(!trusts(1001, 0o40555, true, 1000));
    }

    #[test]
    fn paths_are_normalised_by_name() {
        assert_eq!(normalise(Path::new("/a/./b/../c")), PathBuf::from("/a/c"));
        assert_eq!(normalise(Path::new("/a/../../c")), PathBuf::from("/c"));
        assert_eq!(normalise(Path::new("/creds/../x")), PathBuf::from("/x"));
    }

    #[test]
    fn io_errors_of_the_moment_are_transient() {
        // An honest EIO: /proc/self/mem is a regular file of ours with mode 0600, and reading
        // at offset 0 (never mapped) fails in the kernel.
        let err = read_file(Path::new("/proc/self/mem")).unwrap_err();
        assert!(
            matches!(&err, SecretError::Read { source, .. } if source.raw_os_error() == Some(nix::libc::EIO)),
            "{err}"
        );
        assert!(err.is_transient());
        let io = |errno: nix::errno::Errno| SecretError::Read {
            path: "/s".into(),
            source: std::io::Error::from_raw_os_error(errno as i32),
        };
        use nix::errno::Errno;
        for errno in [
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOMEM,
            Errno::EINTR,
            Errno::EAGAIN,
        ] {
            assert!(io(errno).is_transient(), "{errno}");
        }
        for errno in [Errno::ENOENT, Errno::EACCES, Errno::ENOTDIR] {
            assert!(!io(errno).is_transient(), "{errno}");
        }
        let missing = read_file(Path::new("/nonexistent/secret")).unwrap_err();
        assert!(!missing.is_transient(), "{missing}");
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
