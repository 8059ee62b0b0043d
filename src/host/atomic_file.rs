//! Writing files in directories that other users may share, without letting them turn the
//! write against the host.
//!
//! Whoever can write a directory tokend writes into (a file sink's, typically the consumer's
//! own) can plant a symlink or a FIFO at any name they can guess. So every file is created under
//! a random name with `O_CREAT|O_EXCL|O_NOFOLLOW` (a planted name makes the create fail instead
//! of opening someone else's file), gets its owner and mode through the open descriptor, and is
//! renamed over the final name relative to the directory's descriptor (`renameat` replaces a
//! symlink there instead of following it). The directory itself is reached component by
//! component from `/` with `O_NOFOLLOW`, each one checked as sshd's StrictModes checks a home
//! directory: owned by a trusted user and writable by nobody else. A symlink on the way is
//! followed only if root or the daemon's user owns it (so `/var/run -> /run` works, one the
//! consumer made does not).
//!
//! Not `tempfile`: it creates and renames by path (`renameat` from the working directory), so
//! it cannot open the file or rename it within a directory descriptor opened
//! `O_DIRECTORY|O_NOFOLLOW`, which is what keeps a swapped directory from redirecting the write.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::{Gid, Group, Uid, UnlinkatFlags, User};

/// Symlinks followed while resolving one directory, as the kernel's own limit (`ELOOP`).
const MAX_SYMLINKS: usize = 40;
/// Attempts at a fresh temporary name: a collision of 64 random bits is an attacker guessing
/// (and failing), not chance, so a few tries suffice.
const CREATE_ATTEMPTS: usize = 4;

/// Who may own (and write) the directories a file is written into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trust {
    /// Root, the daemon's user, and for a file sink its configured owner.
    uids: Vec<u32>,
    /// Whether the owner of the file's own directory is trusted too. For tokend's own state
    /// (refresh tokens): `tokend check` and `tokend authorize` may run as root while the
    /// directory belongs to the daemon's user, and the directory's owner is whoever the
    /// operator gave it to.
    dir_owner: bool,
    /// Names the directory's purpose in messages ("a file sink's directory").
    what: &'static str,
}

impl Trust {
    /// A file sink's directory: root, the daemon's user and the sink's owner.
    pub fn sink(owner: Option<u32>) -> Trust {
        let mut uids = vec![0, nix::unistd::geteuid().as_raw()];
        uids.extend(owner);
        uids.dedup();
        Trust {
            uids,
            dir_owner: false,
            what: "a file sink's directory",
        }
    }

    /// The directory of a refresh token (and its in-flight marker and pending authorization):
    /// root, the daemon's user, and the directory's owner.
    pub fn state() -> Trust {
        let mut uids = vec![0, nix::unistd::geteuid().as_raw()];
        uids.dedup();
        Trust {
            uids,
            dir_owner: true,
            what: "a refresh token's directory",
        }
    }

    /// The directory of a DPoP key tokend made: as for [`Trust::state`], which it sits beside.
    pub fn dpop_key() -> Trust {
        Trust {
            what: "a DPoP key's directory",
            ..Trust::state()
        }
    }

    fn trusts(&self, uid: u32) -> bool {
        self.uids.contains(&uid)
    }

    /// Symlinks only of root and the daemon's user: whoever else owns one could point it at any
    /// directory (`/etc`) and have the file created there, owned by the sink's owner.
    fn trusts_link(uid: u32) -> bool {
        uid == 0 || uid == nix::unistd::geteuid().as_raw()
    }

    /// A group is as good as its users when it has no listed member other than a trusted user
    /// and is a trusted user's primary group (a user private group, or root's). Users who have
    /// it as their primary group without being listed cannot be enumerated through NSS; such a
    /// setup is the operator's to avoid.
    fn trusts_group(&self, gid: u32) -> bool {
        let Ok(Some(group)) = Group::from_gid(Gid::from_raw(gid)) else {
            return false;
        };
        let members_trusted = group.mem.iter().all(|name| {
            User::from_name(name)
                .ok()
                .flatten()
                .is_some_and(|u| self.trusts(u.uid.as_raw()))
        });
        let someones_primary = self.uids.iter().any(|&uid| {
            User::from_uid(Uid::from_raw(uid))
                .ok()
                .flatten()
                .is_some_and(|u| u.gid.as_raw() == gid)
        });
        members_trusted && someones_primary
    }

    fn describe(&self) -> String {
        let euid = nix::unistd::geteuid().as_raw();
        let mut who = vec!["root".to_string()];
        if euid != 0 {
            who.push(format!("tokend's user (uid {euid})"));
        }
        who.extend(
            self.uids
                .iter()
                .filter(|&&u| u != 0 && u != euid)
                .map(|u| format!("the sink's owner (uid {u})")),
        );
        if self.dir_owner {
            who.push("the directory's owner".into());
        }
        who.join(", ")
    }
}

/// A directory that is not safe to write into, or cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{path}: cannot open: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{0}: must be an absolute path without \"..\"")]
    NotAbsolute(PathBuf),
    #[error(
        "{path}: owned by uid {uid} (mode {mode:04o}); {what} and every directory above it must be owned by {trusted} (as sshd's StrictModes requires): chown it or choose another directory"
    )]
    Owner {
        path: PathBuf,
        uid: u32,
        mode: u32,
        what: &'static str,
        trusted: String,
    },
    #[error(
        "{path}: writable by {by} (owner uid {uid}, group gid {gid}, mode {mode:04o}); {what} must be writable only by {trusted}, or any of them could plant a file there: chmod go-w {path}"
    )]
    Writable {
        path: PathBuf,
        by: &'static str,
        uid: u32,
        gid: u32,
        mode: u32,
        what: &'static str,
        trusted: String,
    },
    #[error(
        "{path}: is a symlink owned by uid {uid}, who could point it anywhere; only symlinks of root and tokend's user are followed: name the directory it points to instead"
    )]
    Symlink { path: PathBuf, uid: u32 },
    #[error("{0}: too many levels of symbolic links")]
    Loop(PathBuf),
}

impl From<DirError> for io::Error {
    fn from(e: DirError) -> io::Error {
        let kind = match &e {
            DirError::Io { source, .. } => source.kind(),
            _ => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, e)
    }
}

/// The owner and mode a written file gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub mode: u32,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

impl Perms {
    /// Mode 0600, owned by whoever writes it: tokend's own secrets.
    pub const PRIVATE: Perms = Perms {
        mode: 0o600,
        owner: None,
        group: None,
    };
}

/// Whether a write must survive a power loss (fsync of the file and of the directory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Durable,
    /// Surviving a crash of the process is enough (the page cache keeps it).
    ProcessCrash,
}

/// How a written temporary file takes its final name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publish {
    /// Over whatever is there (a symlink is replaced, not followed).
    Replace,
    /// Only if nothing is there.
    Create,
}

/// What is at a name in a directory, without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Missing,
    File,
    Symlink,
    Other,
}

/// A directory reached safely (see the module's comment), to create, read and remove files in
/// by name only.
pub struct SafeDir {
    fd: OwnedFd,
    path: PathBuf,
}

impl fmt::Debug for SafeDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SafeDir").field(&self.path).finish()
    }
}

/// One directory or symlink met on the way, for the checks once the walk is done.
struct Step {
    path: PathBuf,
    stat: FileStat,
    symlink: bool,
}

impl SafeDir {
    /// Opens `dir`, checking every directory from `/` down and every symlink followed.
    pub fn open(dir: &Path, trust: &Trust) -> Result<SafeDir, DirError> {
        if !dir.is_absolute() || dir.components().any(|c| c == Component::ParentDir) {
            return Err(DirError::NotAbsolute(dir.to_path_buf()));
        }
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |e: Errno| DirError::Io {
                path,
                source: e.into(),
            }
        };
        let path_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let root = Path::new("/");
        let root_fd = nix::fcntl::open(root, path_flags, Mode::empty()).map_err(io_err(root))?;
        let mut steps = vec![Step {
            path: root.to_path_buf(),
            stat: nix::sys::stat::fstat(&root_fd).map_err(io_err(root))?,
            symlink: false,
        }];
        // The directories entered so far, `/` first: `..` in a symlink's target pops one.
        let mut stack: Vec<(OwnedFd, PathBuf)> = vec![(root_fd, root.to_path_buf())];
        let mut pending: VecDeque<OsString> = normal_components(dir);
        let mut links = 0;
        while let Some(name) = pending.pop_front() {
            if name == ".." {
                if stack.len() > 1 {
                    stack.pop();
                }
                continue;
            }
            let (cur, cur_path) = stack.last().expect("the root stays");
            let path = cur_path.join(&name);
            let stat = nix::sys::stat::fstatat(cur, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .map_err(io_err(&path))?;
            if kind(&stat) == SFlag::S_IFLNK {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(DirError::Loop(dir.to_path_buf()));
                }
                let target =
                    nix::fcntl::readlinkat(cur, name.as_os_str()).map_err(io_err(&path))?;
                steps.push(Step {
                    path,
                    stat,
                    symlink: true,
                });
                let target = PathBuf::from(target);
                if target.is_absolute() {
                    stack.truncate(1);
                }
                for c in normal_components(&target).into_iter().rev() {
                    pending.push_front(c);
                }
                continue;
            }
            // Swapped for a symlink since the fstatat: O_NOFOLLOW makes this fail (ENOTDIR).
            let fd = nix::fcntl::openat(cur, name.as_os_str(), path_flags, Mode::empty())
                .map_err(io_err(&path))?;
            steps.push(Step {
                path: path.clone(),
                stat: nix::sys::stat::fstat(&fd).map_err(io_err(&path))?,
                symlink: false,
            });
            stack.push((fd, path));
        }
        let (last, path) = stack.pop().expect("the root stays");
        check(&steps, trust)?;
        // O_PATH descriptors cannot be fsynced; "." of it is the same directory, opened for
        // reading.
        let fd = nix::fcntl::openat(
            &last,
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io_err(&path))?;
        Ok(SafeDir { fd, path })
    }

    /// Opens the directory of `path` and returns it with the file's name.
    pub fn of_file<'p>(path: &'p Path, trust: &Trust) -> io::Result<(SafeDir, &'p OsStr)> {
        let (dir, name) = split(path)?;
        Ok((SafeDir::open(dir, trust)?, name))
    }

    /// The directory as reached (symlinks resolved).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces `name` with `content`, atomically: readers see the old file or the new one.
    /// The temporary file has its final owner and mode before the content goes in.
    pub fn replace(
        &self,
        name: &OsStr,
        content: &[u8],
        perms: Perms,
        durability: Durability,
    ) -> io::Result<()> {
        self.write(name, content, perms, durability, Publish::Replace)
            .map(drop)
    }

    /// Creates `name` with `content` unless something is there already (then `false`, and
    /// nothing is written): for a file that must never change once made, such as a key whose
    /// public half others have registered. Durable, and atomic as [`SafeDir::replace`] is.
    pub fn create_new(&self, name: &OsStr, content: &[u8], perms: Perms) -> io::Result<bool> {
        self.write(name, content, perms, Durability::Durable, Publish::Create)
    }

    /// Writes a temporary file and publishes it under `name`; whether it was published.
    fn write(
        &self,
        name: &OsStr,
        content: &[u8],
        perms: Perms,
        durability: Durability,
        publish: Publish,
    ) -> io::Result<bool> {
        let (file, tmp) = self.create_temporary(name)?;
        let written = (|| {
            let mut file = std::fs::File::from(file);
            if perms.owner.is_some() || perms.group.is_some() {
                nix::unistd::fchown(
                    &file,
                    perms.owner.map(Uid::from_raw),
                    perms.group.map(Gid::from_raw),
                )?;
            }
            nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(perms.mode))?;
            file.write_all(content)?;
            if durability == Durability::Durable {
                file.sync_all()?;
            }
            match publish {
                Publish::Replace => {
                    nix::fcntl::renameat(&self.fd, tmp.as_os_str(), &self.fd, name)?;
                    Ok::<_, io::Error>(true)
                }
                // linkat, unlike rename, fails if the name exists (renameat2's RENAME_NOREPLACE
                // would too, but nix offers it on glibc only).
                Publish::Create => {
                    let linked = nix::unistd::linkat(
                        &self.fd,
                        tmp.as_os_str(),
                        &self.fd,
                        name,
                        AtFlags::empty(),
                    );
                    let _ = nix::unistd::unlinkat(
                        &self.fd,
                        tmp.as_os_str(),
                        UnlinkatFlags::NoRemoveDir,
                    );
                    match linked {
                        Ok(()) => Ok(true),
                        Err(Errno::EEXIST) => Ok(false),
                        Err(e) => Err(e.into()),
                    }
                }
            }
        })();
        let published = match written {
            Ok(published) => published,
            Err(e) => {
                let _ =
                    nix::unistd::unlinkat(&self.fd, tmp.as_os_str(), UnlinkatFlags::NoRemoveDir);
                return Err(e);
            }
        };
        if published && durability == Durability::Durable {
            nix::unistd::fsync(&self.fd)?;
        }
        Ok(published)
    }

    /// A new file under an unpredictable name beside `name`, created by this call and no one
    /// else's: with O_EXCL and O_NOFOLLOW, a planted file or symlink makes it fail.
    fn create_temporary(&self, name: &OsStr) -> io::Result<(OwnedFd, OsString)> {
        let mut last = Errno::EEXIST;
        for _ in 0..CREATE_ATTEMPTS {
            let mut tmp = OsString::from(".");
            tmp.push(name);
            tmp.push(format!(".tmp.{:016x}", rand::random::<u64>()));
            match nix::fcntl::openat(
                &self.fd,
                tmp.as_os_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => return Ok((fd, tmp)),
                Err(Errno::EEXIST) => last = Errno::EEXIST,
                Err(e) => return Err(e.into()),
            }
        }
        Err(last.into())
    }

    /// Reads `name` if it is a regular file of at most `limit` bytes; `None` if it does not
    /// exist. A symlink or anything but a regular file there is an error, never followed or
    /// opened for long (O_NONBLOCK: a planted FIFO does not block the open).
    pub fn read(&self, name: &OsStr, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let fd = match nix::fcntl::openat(
            &self.fd,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let stat = nix::sys::stat::fstat(&fd)?;
        if kind(&stat) != SFlag::S_IFREG {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        let mut bytes = Vec::new();
        std::fs::File::from(fd)
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("larger than {limit} bytes"),
            ));
        }
        Ok(Some(bytes))
    }

    /// Removes `name` (whatever it is: a symlink is removed, not followed); missing is fine.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        match nix::unistd::unlinkat(&self.fd, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// What is at `name`, without following a symlink.
    pub fn entry(&self, name: &OsStr) -> io::Result<Entry> {
        match nix::sys::stat::fstatat(&self.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(match kind(&stat) {
                SFlag::S_IFREG => Entry::File,
                SFlag::S_IFLNK => Entry::Symlink,
                _ => Entry::Other,
            }),
            Err(Errno::ENOENT) => Ok(Entry::Missing),
            Err(e) => Err(e.into()),
        }
    }
}

/// Replaces the file at `path` (see [`SafeDir::replace`]) in a directory `trust` accepts.
pub fn replace(
    path: &Path,
    content: &[u8],
    perms: Perms,
    trust: &Trust,
    durability: Durability,
) -> io::Result<()> {
    let (dir, name) = SafeDir::of_file(path, trust)?;
    dir.replace(name, content, perms, durability)
}

/// Reads the regular file at `path` (see [`SafeDir::read`]) in a directory `trust` accepts.
pub fn read(path: &Path, trust: &Trust, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let (dir, name) = SafeDir::of_file(path, trust)?;
    dir.read(name, limit)
}

/// Removes the file at `path` (see [`SafeDir::remove`]) in a directory `trust` accepts.
pub fn remove(path: &Path, trust: &Trust) -> io::Result<()> {
    let (dir, name) = SafeDir::of_file(path, trust)?;
    dir.remove(name)
}

/// The directory and file name of `path`.
pub fn split(path: &Path) -> io::Result<(&Path, &OsStr)> {
    match (path.parent(), path.file_name()) {
        (Some(dir), Some(name)) if !dir.as_os_str().is_empty() => Ok((dir, name)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not an absolute path to a file", path.display()),
        )),
    }
}

fn normal_components(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

fn kind(stat: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(stat.st_mode & SFlag::S_IFMT.bits())
}

/// The StrictModes rule over every step of a walk; the last step is the directory written to.
fn check(steps: &[Step], trust: &Trust) -> Result<(), DirError> {
    let mut trust = trust.clone();
    let last = steps.last().expect("the root is a step");
    if trust.dir_owner {
        trust.uids.push(last.stat.st_uid);
    }
    for (i, step) in steps.iter().enumerate() {
        let (uid, gid, mode) = (
            step.stat.st_uid,
            step.stat.st_gid,
            step.stat.st_mode & 0o7777,
        );
        if step.symlink {
            if !Trust::trusts_link(uid) {
                return Err(DirError::Symlink {
                    path: step.path.clone(),
                    uid,
                });
            }
            continue;
        }
        if !trust.trusts(uid) {
            return Err(DirError::Owner {
                path: step.path.clone(),
                uid,
                mode,
                what: trust.what,
                trusted: trust.describe(),
            });
        }
        // A sticky directory above (/tmp) lets others add names but not rename or remove
        // ours; in the directory itself, others could still claim the file's name first.
        let sticky_above = i < steps.len() - 1 && mode & 0o1000 != 0;
        let writable_by = if sticky_above {
            None
        } else if mode & 0o002 != 0 {
            Some("everyone")
        } else if mode & 0o020 != 0 && !trust.trusts_group(gid) {
            Some("its group, which has other members")
        } else {
            None
        };
        if let Some(by) = writable_by {
            return Err(DirError::Writable {
                path: step.path.clone(),
                by,
                uid,
                gid,
                mode,
                what: trust.what,
                trusted: trust.describe(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};

    const NOBODY: u32 = 65534;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A directory of `owner` with `mode` inside a fresh root-only temporary directory.
    fn dir(owner: u32, mode: u32) -> (tempfile::TempDir, PathBuf) {
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("d");
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(owner), None).unwrap();
        chmod(&dir, mode);
        (top, dir)
    }

    #[test]
    fn planted_symlinks_are_replaced_never_followed() {
        let (top, dir) = dir(NOBODY, 0o755);
        let victim = top.path().join("victim");
        std::fs::write(&victim, "root's\n").unwrap();
        chmod(&victim, 0o644);
        symlink(&victim, dir.join("t")).unwrap();
        // The old temporary name, in case anything still used it.
        symlink(&victim, dir.join(format!(".t.tmp.{}", std::process::id()))).unwrap();
        let perms = Perms {
            mode: 0o640,
            owner: Some(NOBODY),
            group: Some(NOBODY),
        };
        replace(
            &dir.join("t"),
            b"token\n",
            perms,
            &Trust::sink(Some(NOBODY)),
            Durability::Durable,
        )
        .unwrap();
        let meta = std::fs::symlink_metadata(dir.join("t")).unwrap();
        assert!(meta.is_file(), "the symlink was replaced by a file");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o7777),
            (NOBODY, NOBODY, 0o640)
        );
        assert_eq!(std::fs::read_to_string(dir.join("t")).unwrap(), "token\n");
        let victim_meta = std::fs::metadata(&victim).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's\n");
        assert_eq!((victim_meta.uid(), victim_meta.mode() & 0o7777), (0, 0o644));
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "only the file and the planted decoy: {names:?}"
        );
    }

    #[test]
    fn directories_of_untrusted_owners_are_refused_with_owner_and_mode() {
        let (_top, dir) = dir(NOBODY, 0o755);
        let err = SafeDir::open(&dir, &Trust::sink(None)).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(
                err,
                DirError::Owner {
                    uid: NOBODY,
                    mode: 0o755,
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains(&dir.display().to_string()) && text.contains("0755"),
            "{text}"
        );
        assert!(SafeDir::open(&dir, &Trust::sink(Some(NOBODY))).is_ok());
        // A refresh token's directory may belong to whoever the operator gave it to.
        assert!(SafeDir::open(&dir, &Trust::state()).is_ok());
    }

    #[test]
    fn writable_by_others_is_refused_sticky_only_above() {
        let trust = Trust::sink(Some(NOBODY));
        let (_top, dir) = dir(NOBODY, 0o757);
        let err = SafeDir::open(&dir, &trust).unwrap_err();
        assert!(err.to_string().contains("writable by everyone"), "{err}");
        chmod(&dir, 0o1777);
        assert!(matches!(
            SafeDir::open(&dir, &trust),
            Err(DirError::Writable { .. })
        ));
        // The temporary directories of these tests sit in the sticky /tmp.
        chmod(&dir, 0o755);
        assert!(SafeDir::open(&dir, &trust).is_ok());
        chmod(dir.parent().unwrap(), 0o1777);
        let child = dir.join("c");
        std::fs::create_dir(&child).unwrap();
        assert!(SafeDir::open(&child, &trust).is_ok(), "sticky ancestor");
        chmod(&dir, 0o757);
        assert!(
            SafeDir::open(&child, &trust).is_err(),
            "non-sticky ancestor"
        );
    }

    #[test]
    fn group_write_needs_a_group_of_trusted_users_only() {
        let trust = Trust::sink(Some(NOBODY));
        let (_top, dir) = dir(NOBODY, 0o775);
        // nogroup: nobody's primary group, no other listed members.
        std::os::unix::fs::chown(&dir, None, Some(NOBODY)).unwrap();
        assert!(SafeDir::open(&dir, &trust).is_ok());
        // users: nobody trusted has it as primary group.
        std::os::unix::fs::chown(&dir, None, Some(100)).unwrap();
        let err = SafeDir::open(&dir, &trust).unwrap_err();
        assert!(err.to_string().contains("its group"), "{err}");
    }

    #[test]
    fn symlinks_on_the_way_are_followed_only_if_trusted_users_own_them() {
        let (top, dir) = dir(0, 0o755);
        let link = top.path().join("link");
        symlink("d", &link).unwrap();
        let opened = SafeDir::open(&link, &Trust::sink(None)).unwrap();
        assert_eq!(opened.path(), std::fs::canonicalize(&dir).unwrap());
        let up = top.path().join("up");
        symlink("d/../d", &up).unwrap();
        assert!(SafeDir::open(&up.join("."), &Trust::sink(None)).is_ok());
        lchown(&link, Some(NOBODY), None).unwrap();
        // Not even the sink's owner's: it could point the write into /etc.
        let err = SafeDir::open(&link, &Trust::sink(Some(NOBODY))).unwrap_err();
        assert!(
            matches!(err, DirError::Symlink { uid: NOBODY, .. }),
            "{err}"
        );
        let looping = top.path().join("loop");
        symlink("loop", &looping).unwrap();
        assert!(matches!(
            SafeDir::open(&looping, &Trust::sink(None)),
            Err(DirError::Loop(_))
        ));
        assert!(matches!(
            SafeDir::open(Path::new("relative"), &Trust::sink(None)),
            Err(DirError::NotAbsolute(_))
        ));
    }

    #[test]
    fn create_new_never_replaces_and_leaves_no_temporaries() {
        let (top, dir) = dir(0, 0o700);
        let safe = SafeDir::open(&dir, &Trust::dpop_key()).unwrap();
        assert!(
            safe.create_new(OsStr::new("k"), b"one", Perms::PRIVATE)
                .unwrap()
        );
        assert!(
            !safe
                .create_new(OsStr::new("k"), b"two", Perms::PRIVATE)
                .unwrap()
        );
        assert_eq!(std::fs::read(dir.join("k")).unwrap(), b"one");
        let meta = std::fs::metadata(dir.join("k")).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        // A name taken by a symlink stays taken; its target is not written.
        std::fs::write(top.path().join("victim"), "x").unwrap();
        symlink(top.path().join("victim"), dir.join("l")).unwrap();
        assert!(
            !safe
                .create_new(OsStr::new("l"), b"two", Perms::PRIVATE)
                .unwrap()
        );
        assert_eq!(std::fs::read(top.path().join("victim")).unwrap(), b"x");
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["k", "l"]);
    }

    #[test]
    fn reads_follow_nothing_and_never_block() {
        let (top, dir) = dir(0, 0o700);
        let safe = SafeDir::open(&dir, &Trust::state()).unwrap();
        assert_eq!(safe.read(OsStr::new("none"), 10).unwrap(), None);
        std::fs::write(dir.join("f"), "12345").unwrap();
        assert_eq!(safe.read(OsStr::new("f"), 10).unwrap().unwrap(), b"12345");
        assert!(safe.read(OsStr::new("f"), 4).is_err(), "over the limit");
        std::fs::write(top.path().join("secret"), "x").unwrap();
        symlink(top.path().join("secret"), dir.join("l")).unwrap();
        assert!(safe.read(OsStr::new("l"), 10).is_err());
        assert_eq!(safe.entry(OsStr::new("l")).unwrap(), Entry::Symlink);
        nix::unistd::mkfifo(&dir.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        assert!(safe.read(OsStr::new("fifo"), 10).is_err());
        safe.remove(OsStr::new("l")).unwrap();
        safe.remove(OsStr::new("l")).unwrap();
        assert!(
            top.path().join("secret").exists(),
            "the link went, not its target"
        );
    }
}
