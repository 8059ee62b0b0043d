//! Which version of a file is on disk, to notice that one was replaced (renamed over: a new
//! inode), rewritten in place (size, mtime) or had its mode or owner changed (ctime: a key made
//! readable to others must be refused from the next request on, and a repaired one retried).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileStamp([i64; 7]);

impl FileStamp {
    /// The file's stamp, following symlinks (a credential replaced behind a link is a new
    /// version); `None` when it cannot be `stat`ed, which reading it will explain.
    pub fn of(path: &Path) -> Option<Self> {
        let m = std::fs::metadata(path).ok()?;
        // Wrapping casts: these are compared, never computed with.
        Some(Self([
            m.dev() as i64,
            m.ino() as i64,
            m.size() as i64,
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_rename_a_rewrite_and_a_chmod_are_new_versions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, "a").unwrap();
        let first = FileStamp::of(&path).unwrap();
        assert_eq!(FileStamp::of(&path), Some(first));
        std::fs::write(&path, "ab").unwrap();
        let rewritten = FileStamp::of(&path).unwrap();
        assert_ne!(rewritten, first);
        let tmp = dir.path().join("g");
        std::fs::write(&tmp, "ab").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let renamed = FileStamp::of(&path).unwrap();
        assert_ne!(renamed, rewritten);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(FileStamp::of(&path).unwrap(), renamed);
        assert_eq!(FileStamp::of(&dir.path().join("missing")), None);
    }
}
