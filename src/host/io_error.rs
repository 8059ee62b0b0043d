//! Which I/O errors an operator must fix and which pass by themselves.

/// I/O errors that say the path or its permissions are wrong; every other one (EMFILE, ENFILE,
/// ENOMEM, EIO, EINTR, EAGAIN, ENOSPC, ...) is a condition of the moment.
pub fn needs_operator(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    matches!(
        e.raw_os_error().map(Errno::from_raw),
        Some(
            Errno::ENOENT
                | Errno::ENOTDIR
                | Errno::EISDIR
                | Errno::ENAMETOOLONG
                | Errno::ELOOP
                | Errno::EACCES
                | Errno::EPERM
                | Errno::EROFS
        )
    )
}
