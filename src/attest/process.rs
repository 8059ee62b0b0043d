//! The process on the other end of a Unix connection, read once when the connection is accepted
//! and tied to that process by a pidfd, so that a pid the kernel has since given to another
//! process is never read as the caller.
//!
//! The kernel gives the peer's pid (`SO_PEERCRED`) as a number, and a number can be reused the
//! moment the caller exits. A pidfd names the process itself: `SO_PEERPIDFD` (Linux 6.5) hands
//! over the connecting process's own, and on older kernels `pidfd_open` of the number is
//! accepted only for a process that started before the connection was accepted. Everything is
//! then read from `/proc/PID` by number, and the pidfd is asked afterwards whether its process
//! is still alive: if it is, the number was its own the whole time, so what was read is its
//! own. A process that has gone (or become a zombie) by then has no attributes, and every rule
//! that needs one refuses it.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::OnceLock;

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{getsockopt, sockopt};
use nix::time::{ClockId, clock_gettime};

use super::cgroup::{self, CgroupInfo};
use super::kubelet::Pod;

/// `/proc/PID/cgroup` of a process is a few hundred bytes (one line per v1 hierarchy); more is
/// read no further.
const MAX_CGROUP_BYTES: u64 = 64 * 1024;

/// What tokend knows about a caller's process, read at accept.
#[derive(Debug)]
pub struct Process {
    /// The pid in tokend's PID namespace when the connection was accepted.
    pub pid: i32,
    /// The program it runs; `None` when tokend may not read it (another user's process and no
    /// CAP_SYS_PTRACE) or the file was deleted since it started.
    pub exe: Option<Executable>,
    pub cgroup: CgroupInfo,
    /// Its pod, once looked up at the kubelet (a pod found stays the process's pod).
    pub pod: OnceLock<std::sync::Arc<Pod>>,
    /// The SHA-256 of its executable, once hashed (`None`: it could not be).
    pub exe_sha256: OnceLock<Option<[u8; 32]>>,
}

/// The program a process runs: the real path of its executable and which file version that was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    pub path: PathBuf,
    pub file: FileVersion,
}

/// A file's identity and version: content cannot change without changing `ctime`, which nobody
/// can set, so two files that agree on all of this hold the same bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileVersion {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
}

impl FileVersion {
    pub fn of(meta: &std::fs::Metadata) -> FileVersion {
        FileVersion {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// A connection's caller as read at accept, handed to each of its requests.
#[derive(Debug, Clone)]
pub struct PeerProcess(pub Result<std::sync::Arc<Process>, Unattested>);

/// Why a caller's process could not be read: it has no attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unattested {
    #[error("the caller's process is not visible in tokend's PID namespace")]
    OtherNamespace,
    #[error("the caller's process has exited")]
    Gone,
    #[error("the caller's pid now belongs to a process started after the connection")]
    PidReused,
    #[error("cannot read the caller's process: {0}")]
    Unreadable(Errno),
}

impl Process {
    /// Reads the peer of `socket`, a connection accepted at `accepted_at` (CLOCK_BOOTTIME, as
    /// [`boot_time_now`] reads it).
    pub fn of_peer(socket: &impl AsFd, accepted_at: Ticks) -> Result<Process, Unattested> {
        let cred = getsockopt(socket, sockopt::PeerCredentials).map_err(Unattested::Unreadable)?;
        let pid = cred.pid();
        if pid <= 0 {
            return Err(Unattested::OtherNamespace);
        }
        let pidfd = match getsockopt(socket, sockopt::PeerPidfd) {
            Ok(pidfd) => {
                // The kernel's own pidfd of the connecting process: its pid now, -1 once it
                // has exited, 0 outside our namespace.
                match pidfd_pid(pidfd.as_fd())? {
                    p if p == pid => pidfd,
                    -1 => return Err(Unattested::Gone),
                    0 => return Err(Unattested::OtherNamespace),
                    _ => return Err(Unattested::PidReused),
                }
            }
            // Before Linux 6.5.
            Err(Errno::ENOPROTOOPT) => pidfd_by_pid(pid, accepted_at)?,
            // The peer has exited (the kernel makes no pidfd for a process without a task).
            Err(Errno::ESRCH | Errno::EINVAL) => return Err(Unattested::Gone),
            Err(e) => return Err(Unattested::Unreadable(e)),
        };
        let process = read_proc(pid)?;
        // Alive now, so the pid was its own throughout the reads above.
        ensure_alive(pidfd.as_fd())?;
        Ok(process)
    }
}

/// A pidfd for `pid`, if the process holding that pid started no later than `accepted_at`: a
/// process that started after the connection was accepted cannot have made it. (A pid reused
/// between the connection and the accept within one clock tick passes: the reason to prefer
/// `SO_PEERPIDFD`.)
pub fn pidfd_by_pid(pid: i32, accepted_at: Ticks) -> Result<OwnedFd, Unattested> {
    let raw = rustix::process::Pid::from_raw(pid).ok_or(Unattested::OtherNamespace)?;
    let pidfd = rustix::process::pidfd_open(raw, rustix::process::PidfdFlags::empty()).map_err(
        |e| match e {
            rustix::io::Errno::SRCH => Unattested::Gone,
            e => Unattested::Unreadable(Errno::from_raw(e.raw_os_error())),
        },
    )?;
    let started = start_time(pid)?;
    ensure_alive(pidfd.as_fd())?;
    if started > accepted_at {
        return Err(Unattested::PidReused);
    }
    Ok(pidfd)
}

/// Clock ticks since boot, the unit of a process's start time in `/proc/PID/stat`.
pub type Ticks = u64;

/// Now in [`Ticks`] (CLOCK_BOOTTIME, which counts suspended time as the start times do).
pub fn boot_time_now() -> Ticks {
    // Cannot fail for a clock every kernel tokend runs on has; were it to, a start time of 0
    // refuses every pid-based identification rather than accepting one.
    let Ok(now) = clock_gettime(ClockId::CLOCK_BOOTTIME) else {
        return 0;
    };
    let hz = ticks_per_second();
    (now.tv_sec() as u64).saturating_mul(hz) + now.tv_nsec() as u64 * hz / 1_000_000_000
}

/// USER_HZ: 100 on every Linux ABI tokend builds for (it is fixed at 100 for userspace
/// whatever the kernel's own tick rate).
fn ticks_per_second() -> u64 {
    100
}

/// Reads what rules can ask about process `pid`.
fn read_proc(pid: i32) -> Result<Process, Unattested> {
    let dir = PathBuf::from(format!("/proc/{pid}"));
    let mut text = String::new();
    File::open(dir.join("cgroup"))
        .and_then(|f| f.take(MAX_CGROUP_BYTES).read_to_string(&mut text))
        .map_err(gone_or_unreadable)?;
    let exe = executable(&dir);
    Ok(Process {
        pid,
        exe,
        cgroup: cgroup::parse(&text),
        pod: OnceLock::new(),
        exe_sha256: OnceLock::new(),
    })
}

/// The process's executable, unless it cannot be read (permission: a process of another user)
/// or no longer has a name (deleted or replaced since it started: the path would name another
/// file).
fn executable(dir: &std::path::Path) -> Option<Executable> {
    let link = dir.join("exe");
    let meta = std::fs::metadata(&link).ok()?;
    if meta.nlink() == 0 {
        return None;
    }
    let path = std::fs::read_link(&link).ok()?;
    // The name must still lead to the file the process runs.
    let named = std::fs::metadata(&path).ok()?;
    let file = FileVersion::of(&meta);
    (FileVersion::of(&named) == file).then_some(Executable { path, file })
}

fn gone_or_unreadable(e: io::Error) -> Unattested {
    match e.raw_os_error().map(Errno::from_raw) {
        Some(Errno::ENOENT | Errno::ESRCH) => Unattested::Gone,
        Some(errno) => Unattested::Unreadable(errno),
        None => Unattested::Unreadable(Errno::EIO),
    }
}

/// The start time (field 22) of `/proc/PID/stat`.
fn start_time(pid: i32) -> Result<Ticks, Unattested> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(gone_or_unreadable)?;
    parse_start_time(&stat).ok_or(Unattested::Unreadable(Errno::EINVAL))
}

/// Field 22 of a stat line. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so fields are counted from the last `)`.
fn parse_start_time(stat: &str) -> Option<Ticks> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields 3 onwards; the start time is the 20th of them.
    after_comm.split_ascii_whitespace().nth(19)?.parse().ok()
}

/// The pid a pidfd's process has in tokend's namespace (`Pid:` of its fdinfo): -1 once it has
/// exited, 0 if it is not visible here.
fn pidfd_pid(pidfd: BorrowedFd<'_>) -> Result<i32, Unattested> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))
        .map_err(gone_or_unreadable)?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or(Unattested::Unreadable(Errno::EINVAL))
}

/// A pidfd is readable once its process has exited (zombies included).
fn ensure_alive(pidfd: BorrowedFd<'_>) -> Result<(), Unattested> {
    let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => Ok(()),
        Ok(_) => Err(Unattested::Gone),
        Err(e) => Err(Unattested::Unreadable(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    #[test]
    fn the_caller_is_read_from_its_own_process() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        drop(theirs);
        // Our own end: the peer is this very process (a socketpair's peer is its creator).
        let p = Process::of_peer(&ours, boot_time_now()).unwrap();
        assert_eq!(p.pid, std::process::id() as i32);
        let exe = p.exe.expect("our own executable is readable");
        assert_eq!(
            exe.path,
            std::env::current_exe().unwrap().canonicalize().unwrap()
        );
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        assert_eq!(p.cgroup, cgroup::parse(&own));
    }

    #[test]
    fn start_time_is_counted_from_the_last_parenthesis() {
        let stat = "4242 (evil) 1 2 3) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("4242 (x) S 1"), None);
        assert_eq!(parse_start_time("no parenthesis"), None);
    }

    #[test]
    fn a_pid_is_not_taken_for_a_process_started_after_the_accept() {
        let mut child = Guard(
            Command::new("sleep")
                .arg("30")
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = child.0.id() as i32;
        let started = start_time(pid).unwrap();
        // Accepted before the process started: whoever connected, it was not this process.
        assert_eq!(
            pidfd_by_pid(pid, started - 1).err(),
            Some(Unattested::PidReused)
        );
        // Accepted after it started: the process may be the caller.
        let pidfd = pidfd_by_pid(pid, boot_time_now()).unwrap();
        assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), pid);
        ensure_alive(pidfd.as_fd()).unwrap();
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        assert_eq!(ensure_alive(pidfd.as_fd()), Err(Unattested::Gone));
        assert_eq!(pidfd_pid(pidfd.as_fd()).unwrap(), -1);
        assert_eq!(
            pidfd_by_pid(pid, boot_time_now()).err(),
            Some(Unattested::Gone)
        );
    }

    #[test]
    fn boot_time_ticks_agree_with_a_fresh_process() {
        let child = Guard(Command::new("sleep").arg("5").spawn().unwrap());
        let started = start_time(child.0.id() as i32).unwrap();
        let now = boot_time_now();
        assert!(started <= now && now - started < 100, "{started} vs {now}");
    }

    /// Kills and reaps the child on drop.
    struct Guard(std::process::Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.kill().ok();
            self.0.wait().ok();
        }
    }
}
