//! The listeners callers reach tokend on: a Unix socket (the default, permissioned by file mode)
//! and optionally a loopback TCP port.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("{path}: {reason}")]
    Unix { path: PathBuf, reason: String },
    #[error("{addr}: cannot listen: {source}")]
    Tcp {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

/// The socket file of a bound listener; removed when this is dropped, so a clean stop leaves
/// nothing behind.
pub struct SocketFile {
    path: PathBuf,
}

impl SocketFile {
    /// Binds `path` with `mode`, replacing a stale socket left by a previous run. Anything
    /// else at that path (a regular file, a directory) is left alone and reported: removing it
    /// could destroy an operator's data through a config typo.
    pub fn bind(path: &Path, mode: u32) -> Result<(UnixListener, SocketFile), ListenError> {
        let fail = |reason: String| ListenError::Unix {
            path: path.to_path_buf(),
            reason,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(fail(
                        "another process is serving on this socket (is tokend already running?)"
                            .into(),
                    ));
                }
                std::fs::remove_file(path)
                    .map_err(|e| fail(format!("cannot remove stale socket: {e}")))?;
            }
            Ok(_) => return Err(fail("exists and is not a socket; not replacing it".into())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(fail(format!("cannot inspect: {e}"))),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.is_dir()
        {
            return Err(fail(format!(
                "directory {} does not exist (under systemd, RuntimeDirectory= creates it)",
                dir.display()
            )));
        }
        let listener = UnixListener::bind(path).map_err(|e| fail(format!("cannot bind: {e}")))?;
        let file = SocketFile {
            path: path.to_path_buf(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| fail(format!("cannot set mode {mode:o}: {e}")))?;
        Ok((listener, file))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the optional loopback TCP listener (config validation has checked it is loopback).
pub async fn bind_tcp(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener, ListenError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ListenError::Tcp { addr, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_socket_is_replaced_and_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        // The std listener leaves its file behind: that is the stale socket.
        assert!(path.exists());
        let socket = SocketFile::bind(&path, 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(socket);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn live_socket_and_regular_files_are_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.sock");
        let _live = SocketFile::bind(&path, 0o600).unwrap();
        let err = SocketFile::bind(&path, 0o600).err().unwrap();
        assert!(err.to_string().contains("already running"), "{err}");

        let file = dir.path().join("data");
        std::fs::write(&file, "keep me").unwrap();
        let err = SocketFile::bind(&file, 0o600).err().unwrap();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
