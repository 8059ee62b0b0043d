//! Running a configured command for a credential (`subject_token_command`, ...): an argv run
//! without a shell, off the async workers, killed with its whole process group at a deadline,
//! its output capped.
//!
//! The command runs with stdin from /dev/null, in `/`, with tokend's environment (CI systems
//! hand their OIDC tokens over in variables), in a process group of its own. Everything that
//! blocks (the permission walk, spawning, reading both pipes under `poll(2)`, waiting for the
//! exit) runs on tokio's blocking pool through [`offload`], so a hung program or file system
//! holds a pool thread, never a worker.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, ChildStderr, ChildStdout, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use secrecy::zeroize::Zeroizing;

use crate::host::offload::{self, Stalled};
use secrecy::SecretString;

/// How much of a failed command's stderr is kept to find its first line; the rest is read and
/// dropped, so that a chatty command never blocks on a full pipe.
const STDERR_KEPT: usize = 4096;

/// How much of that first line an error message shows.
const STDERR_SHOWN: usize = 200;

/// Time allowed past the deadline for killing the group and reaping the program, which takes
/// milliseconds unless the program is stuck in the kernel (a hung mount); then the caller
/// gives up and the pool thread waits alone.
const REAP_SLACK: Duration = Duration::from_secs(1);

/// Symbolic links followed before giving up, as the kernel does (`ELOOP`).
const MAX_LINKS: usize = 40;

/// Why a command gave no credential. Messages never quote its standard output.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("names no program: set it as [\"/usr/bin/program\", \"arg\", ...]")]
    NoProgram,
    #[error("the command's program {0:?} must be an absolute path")]
    NotAbsolute(String),
    #[error("argument {0} of the command holds a NUL character, which no program can be passed")]
    Nul(usize),
    #[error("{path}: cannot run it: {source}")]
    Unreachable { path: PathBuf, source: io::Error },
    #[error("{path}: is {kind}, not a program")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("{path}: is not executable (mode {mode:04o}): chmod +x {path}")]
    NotExecutable { path: PathBuf, mode: u32 },
    #[error(
        "{path}: is owned by uid {uid}; a command's program and every directory above it must be owned by root or tokend's user (uid {ours}), or its owner could make tokend run anything: chown root {path}"
    )]
    Owner { path: PathBuf, uid: u32, ours: u32 },
    #[error(
        "{path}: is writable by {who} (mode {mode:04o}), who could replace the program tokend runs: chmod go-w {path}"
    )]
    Writable {
        path: PathBuf,
        mode: u32,
        who: &'static str,
    },
    #[error(
        "{path}: is a shared directory (mode {mode:04o}, like /tmp) where anyone could replace the program tokend runs: install it in a directory only root or tokend's user can write"
    )]
    Shared { path: PathBuf, mode: u32 },
    #[error("could not start {program}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error(
        "did not finish within {}: killed, with every process it started{}",
        humantime::format_duration(*.timeout),
        if *.held_open { " (its program had exited, but a process it started kept its output open: redirect that process's output)" } else { "" }
    )]
    TimedOut { timeout: Duration, held_open: bool },
    #[error("{how}{}", stderr_part(.stderr))]
    Failed { how: String, stderr: String },
    #[error("wrote more than {max} bytes to stdout: killed; a token is not that large")]
    TooLarge { max: usize },
    #[error("wrote something other than UTF-8 text to stdout")]
    NotText,
    #[error("wrote nothing but whitespace to stdout")]
    Empty,
    #[error("reading its output: {0}")]
    Io(io::Error),
    #[error("{0} (is its program on a hung file system, or the process unkillable?)")]
    Stalled(Stalled),
}

fn stderr_part(stderr: &str) -> String {
    if stderr.is_empty() {
        " and wrote nothing to stderr".into()
    } else {
        format!("; stderr: {stderr}")
    }
}

impl CommandError {
    /// Whether trying again later may help (a timeout, a failed run, resources short), as
    /// opposed to a command that cannot run as configured (missing, unsafe, not text).
    pub fn is_transient(&self) -> bool {
        match self {
            CommandError::Unreachable { source, .. } => !super::io_error::needs_operator(source),
            CommandError::Spawn { source, .. } => !cannot_start(source),
            CommandError::TimedOut { .. }
            | CommandError::Failed { .. }
            | CommandError::Io(_)
            | CommandError::Stalled(_) => true,
            CommandError::NoProgram
            | CommandError::NotAbsolute(_)
            | CommandError::Nul(_)
            | CommandError::NotAFile { .. }
            | CommandError::NotExecutable { .. }
            | CommandError::Owner { .. }
            | CommandError::Writable { .. }
            | CommandError::Shared { .. }
            | CommandError::TooLarge { .. }
            | CommandError::NotText
            | CommandError::Empty => false,
        }
    }
}

/// Spawn errors that say the program cannot run as it is (missing, not permitted, not a
/// format the kernel runs, a missing `#!` interpreter); EAGAIN, EMFILE, ENOMEM, ETXTBSY...
/// pass.
fn cannot_start(e: &io::Error) -> bool {
    super::io_error::needs_operator(e)
        || e.raw_os_error() == Some(Errno::ENOEXEC as i32)
        || e.raw_os_error().is_none()
}

/// Runs `argv` (`argv[0]` an absolute path) with stdin from /dev/null and returns its standard
/// output as text, trimmed of surrounding whitespace. Killed, with every process it started,
/// after `timeout`; fails when stdout exceeds `max_output` bytes (allocated up front, so the
/// token is never left behind in a buffer that grew).
pub async fn run(
    argv: &[String],
    timeout: Duration,
    max_output: usize,
) -> Result<SecretString, CommandError> {
    let deadline = Instant::now() + timeout;
    let program = argv.first().ok_or(CommandError::NoProgram)?;
    let owned = argv.to_vec();
    offload::run(Path::new(program), timeout + REAP_SLACK, move || {
        run_blocking(&owned, deadline, timeout, max_output)
    })
    .await
    .map_err(CommandError::Stalled)?
}

fn run_blocking(
    argv: &[String],
    deadline: Instant,
    timeout: Duration,
    max_output: usize,
) -> Result<SecretString, CommandError> {
    check(argv)?;
    let child = std::process::Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .current_dir("/")
        .process_group(0)
        .spawn()
        .map_err(|source| CommandError::Spawn {
            program: argv[0].clone(),
            source,
        })?;
    let mut group = Group::new(child);
    let (mut stdout, mut stderr) = group.pipes();
    let mut out = Zeroizing::new(Vec::with_capacity(max_output.saturating_add(1)));
    let mut err = Vec::with_capacity(STDERR_KEPT);
    let read = read_until(&mut stdout, &mut stderr, &mut out, &mut err, deadline);
    drop((stdout, stderr));
    let status = match read {
        Ok(Ended::Closed) if group.exited_by(deadline)? => group.end(),
        Ok(Ended::Closed | Ended::Deadline) => {
            let held_open = group.exited_by(Instant::now())?;
            group.end().map_err(CommandError::Io)?;
            return Err(CommandError::TimedOut { timeout, held_open });
        }
        Ok(Ended::TooLarge) => {
            group.end().map_err(CommandError::Io)?;
            return Err(CommandError::TooLarge { max: max_output });
        }
        Err(e) => {
            group.end().map_err(CommandError::Io)?;
            return Err(CommandError::Io(e));
        }
    }
    .map_err(CommandError::Io)?;
    if !status.success() {
        return Err(CommandError::Failed {
            how: describe(status),
            stderr: first_line(&err),
        });
    }
    let text = std::str::from_utf8(&out).map_err(|_| CommandError::NotText)?;
    let token = text.trim();
    if token.is_empty() {
        return Err(CommandError::Empty);
    }
    // Exactly sized, so that the secret's Box<str> takes this allocation instead of copying it.
    let mut owned = String::with_capacity(token.len());
    owned.push_str(token);
    Ok(SecretString::from(owned))
}

/// How reading the command's output ended.
enum Ended {
    /// Both pipes reached end of file.
    Closed,
    Deadline,
    /// Stdout passed its cap.
    TooLarge,
}

/// Reads stdout into `out` (up to its capacity less one) and the head of stderr into `err`
/// until both close, the deadline passes or stdout overflows.
fn read_until(
    stdout: &mut Option<ChildStdout>,
    stderr: &mut Option<ChildStderr>,
    out: &mut Vec<u8>,
    err: &mut Vec<u8>,
    deadline: Instant,
) -> io::Result<Ended> {
    let cap = out.capacity() - 1;
    let mut scratch = [0u8; 4096];
    loop {
        if stdout.is_none() && stderr.is_none() {
            return Ok(Ended::Closed);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Ended::Deadline);
        }
        let (out_ready, err_ready) = {
            let mut fds: Vec<PollFd> = [stdout.as_ref().map(AsFd::as_fd)]
                .into_iter()
                .chain([stderr.as_ref().map(AsFd::as_fd)])
                .flatten()
                .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
                .collect();
            // Rounded up: a timeout rounded down would wake early and spin.
            let wait = PollTimeout::try_from(left + Duration::from_micros(999))
                .unwrap_or(PollTimeout::MAX);
            match nix::poll::poll(&mut fds, wait) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let mut fds = fds.iter();
            (
                stdout.is_some() && fds.next().is_some_and(ready),
                stderr.is_some() && fds.next().is_some_and(ready),
            )
        };
        if out_ready && let Some(pipe) = stdout {
            let start = out.len();
            // Within the capacity reserved up front: no reallocation, no stray copy.
            out.resize(cap + 1, 0);
            let n = retry(|| pipe.read(&mut out[start..]));
            out.truncate(start + *n.as_ref().unwrap_or(&0));
            match n? {
                0 => *stdout = None,
                _ if out.len() > cap => return Ok(Ended::TooLarge),
                _ => {}
            }
        }
        if err_ready && let Some(pipe) = stderr {
            let n = retry(|| pipe.read(&mut scratch))?;
            let keep = n.min(STDERR_KEPT - err.len());
            err.extend_from_slice(&scratch[..keep]);
            if n == 0 {
                *stderr = None;
            }
        }
    }
}

fn retry(mut read: impl FnMut() -> io::Result<usize>) -> io::Result<usize> {
    loop {
        match read() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// The command's program and its process group. The program is reaped only after the group
/// was killed: until then its pid, which is the group's id, cannot be reused, so the signal
/// reaches no stranger. Dropping an unended group kills and reaps it too.
struct Group {
    child: Child,
    pid: Pid,
    status: Option<ExitStatus>,
}

impl Group {
    fn new(child: Child) -> Group {
        let pid = Pid::from_raw(child.id() as i32);
        Group {
            child,
            pid,
            status: None,
        }
    }

    fn pipes(&mut self) -> (Option<ChildStdout>, Option<ChildStderr>) {
        (self.child.stdout.take(), self.child.stderr.take())
    }

    /// Waits until `deadline` for the program to exit, without reaping it: whether it did.
    fn exited_by(&self, deadline: Instant) -> Result<bool, CommandError> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        // Its pipes have just closed, which usually means it is exiting: look again soon,
        // then less often.
        let mut pause = Duration::from_millis(1);
        loop {
            match waitid(Id::Pid(self.pid), flags) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(_) => return Ok(true),
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(CommandError::Io(e.into())),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Kills whatever is left of the group (a program that exited may have left processes
    /// behind) and reaps the program.
    fn end(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        // ESRCH cannot happen while the program is unreaped; nothing else is worth reporting.
        let _ = killpg(self.pid, Signal::SIGKILL);
        let status = self.child.wait()?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        let _ = self.end();
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(name) => format!("was killed by signal {signal} ({name})"),
            Err(_) => format!("was killed by signal {signal}"),
        },
        (None, None) => format!("ended with {status}"),
    }
}

/// The first non-blank line of stderr, escaped and cut short: enough to say what went wrong,
/// with nothing that could forge a log line.
fn first_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let Some(line) = text.lines().map(str::trim).find(|l| !l.is_empty()) else {
        return String::new();
    };
    let mut shown: String = line.escape_debug().take(STDERR_SHOWN).collect();
    if line.escape_debug().nth(STDERR_SHOWN).is_some() {
        shown.push_str("...");
    }
    shown
}

/// Checks that `argv` can be run safely: `argv[0]` absolute, a regular executable file, it
/// and every directory the kernel reads on the way to it (following symbolic links as `exec`
/// does) owned by root or tokend's user and writable by no one else: anyone who could replace
/// it would run code as tokend. Called at load and again before every run.
pub fn check(argv: &[String]) -> Result<(), CommandError> {
    let program = argv
        .first()
        .filter(|p| !p.is_empty())
        .ok_or(CommandError::NoProgram)?;
    if let Some(i) = argv.iter().position(|a| a.contains('\0')) {
        return Err(CommandError::Nul(i));
    }
    let path = Path::new(program);
    if !path.is_absolute() {
        return Err(CommandError::NotAbsolute(program.clone()));
    }
    let (file, meta) = resolve(path)?;
    if !meta.is_file() {
        return Err(CommandError::NotAFile {
            path: file,
            kind: super::file_kind::of(&meta.file_type()),
        });
    }
    let ours = nix::unistd::geteuid().as_raw();
    judge(&file, meta.uid(), meta.mode(), ours)?;
    if meta.mode() & 0o111 == 0 {
        return Err(CommandError::NotExecutable {
            path: file,
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Follows `path` as the kernel will, one component at a time, checking every directory whose
/// entries the lookup reads (those holding symbolic links too): the final file and its
/// metadata, not yet judged.
fn resolve(path: &Path) -> Result<(PathBuf, std::fs::Metadata), CommandError> {
    let ours = nix::unistd::geteuid().as_raw();
    let lstat = |p: &Path| {
        std::fs::symlink_metadata(p).map_err(|source| CommandError::Unreachable {
            path: p.to_path_buf(),
            source,
        })
    };
    let root = PathBuf::from("/");
    let checked = |dir: &Path, meta: &std::fs::Metadata| judge(dir, meta.uid(), meta.mode(), ours);
    checked(&root, &lstat(&root)?)?;
    let mut dir = root.clone();
    let mut rest: VecDeque<OsString> = names(path);
    let mut links = 0;
    while let Some(name) = rest.pop_front() {
        if name == ".." {
            // `dir` is a real path whose every ancestor was checked on the way in.
            dir.pop();
            continue;
        }
        let here = dir.join(&name);
        let meta = lstat(&here)?;
        if meta.file_type().is_symlink() {
            links += 1;
            let target = match std::fs::read_link(&here) {
                Ok(_) if links > MAX_LINKS => {
                    Err(io::Error::from_raw_os_error(Errno::ELOOP as i32))
                }
                other => other,
            }
            .map_err(|source| CommandError::Unreachable {
                path: here.clone(),
                source,
            })?;
            if target.is_absolute() {
                dir = root.clone();
            }
            for name in names(&target).into_iter().rev() {
                rest.push_front(name);
            }
        } else if rest.is_empty() {
            return Ok((here, meta));
        } else if meta.is_dir() {
            checked(&here, &meta)?;
            dir = here;
        } else {
            return Err(CommandError::Unreachable {
                path: here,
                source: io::Error::from_raw_os_error(Errno::ENOTDIR as i32),
            });
        }
    }
    // The path named a directory (`/usr/bin/..`).
    Err(CommandError::NotAFile {
        path: dir,
        kind: "a directory",
    })
}

/// The names along `path`, `..` kept (it means the parent of wherever a link led).
fn names(path: &Path) -> VecDeque<OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(name.to_os_string()),
            Component::ParentDir => Some("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
        })
        .collect()
}

/// Whether a file or directory with this owner and mode keeps the program safe: owned by root
/// or tokend's user (`ours`), writable by no group and no other user.
fn judge(path: &Path, uid: u32, mode: u32, ours: u32) -> Result<(), CommandError> {
    let path = path.to_path_buf();
    let mode = mode & 0o7777;
    if uid != 0 && uid != ours {
        return Err(CommandError::Owner { path, uid, ours });
    }
    // A sticky directory keeps others from removing files they do not own, not from adding
    // new ones, and the program could be one of those new ones.
    if mode & 0o1002 == 0o1002 {
        return Err(CommandError::Shared { path, mode });
    }
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (false, false) => return Ok(()),
        (true, false) => "its group",
        (false, true) => "other users",
        (true, true) => "its group and other users",
    };
    Err(CommandError::Writable { path, mode, who })
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    const CAP: usize = 64 * 1024;

    fn argv(parts: &[&str]) -> Vec<String> {
        parts.iter().map(|p| p.to_string()).collect()
    }

    /// `/bin/sh -c SCRIPT sh ARGS...`: the script sees ARGS as `$1`...
    fn sh(script: &str, args: &[&Path]) -> Vec<String> {
        let mut v = argv(&["/bin/sh", "-c", script, "sh"]);
        v.extend(args.iter().map(|a| a.display().to_string()));
        v
    }

    async fn run_timed(
        argv: &[String],
        timeout: Duration,
    ) -> (Result<String, CommandError>, Duration) {
        let start = Instant::now();
        let out = run(argv, timeout, CAP).await;
        (out.map(|t| t.expose_secret().to_string()), start.elapsed())
    }

    fn pid_in(file: &Path) -> i32 {
        std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .trim()
            .parse()
            .unwrap()
    }

    /// Our own child must be reaped, not merely dead: no process, not even a zombie.
    fn assert_reaped(pid: i32) {
        assert_eq!(
            nix::sys::signal::kill(Pid::from_raw(pid), None),
            Err(Errno::ESRCH),
            "pid {pid} is still there"
        );
    }

    /// A grandchild is reparented to pid 1 (or a subreaper), which may be slow to reap it, or
    /// never do it in a container: dead is gone or a zombie.
    fn assert_dies(pid: i32) {
        let dead = || match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z')),
        };
        let until = Instant::now() + Duration::from_secs(2);
        while !dead() {
            assert!(Instant::now() < until, "pid {pid} still runs");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn a_hanging_command_is_killed_and_reaped_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let cmd = sh(r#"echo $$ > "$1"; exec /bin/sleep 60"#, &[&pid_file]);
        let timeout = Duration::from_millis(1500);
        let (out, took) = run_timed(&cmd, timeout).await;
        let err = out.unwrap_err();
        assert!(
            matches!(
                err,
                CommandError::TimedOut {
                    held_open: false,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.is_transient());
        assert!(
            took >= timeout && took < timeout + Duration::from_secs(2),
            "{took:?}"
        );
        assert!(
            err.to_string().contains("did not finish within 1s 500ms"),
            "{err}"
        );
        assert_reaped(pid_in(&pid_file));
    }

    #[tokio::test]
    async fn a_process_left_holding_stdout_is_killed_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let cmd = sh(r#"/bin/sleep 60 & echo $! > "$1"; echo tok"#, &[&pid_file]);
        let timeout = Duration::from_secs(1);
        let (out, took) = run_timed(&cmd, timeout).await;
        let err = out.unwrap_err();
        assert!(
            matches!(
                err,
                CommandError::TimedOut {
                    held_open: true,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("kept its output open"), "{err}");
        assert!(took < timeout + Duration::from_secs(2), "{took:?}");
        assert_dies(pid_in(&pid_file));
    }

    #[tokio::test]
    async fn what_a_successful_command_left_running_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let cmd = sh(
            r#"/bin/sleep 60 >/dev/null 2>&1 & echo $! > "$1"; echo tok"#,
            &[&pid_file],
        );
        let (out, took) = run_timed(&cmd, Duration::from_secs(10)).await;
        assert_eq!(out.unwrap(), "tok");
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert_dies(pid_in(&pid_file));
    }

    #[tokio::test]
    async fn a_chatty_command_is_cut_off_at_the_cap_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        for tail in ["exec /usr/bin/yes", "exec /usr/bin/head -c 10M /dev/zero"] {
            let cmd = sh(&format!(r#"echo $$ > "$1"; {tail}"#), &[&pid_file]);
            let (out, took) = run_timed(&cmd, Duration::from_secs(20)).await;
            let err = out.unwrap_err();
            assert!(
                matches!(err, CommandError::TooLarge { max: CAP }),
                "{err:?}"
            );
            assert!(!err.is_transient());
            assert!(took < Duration::from_secs(3), "{tail}: {took:?}");
            assert_reaped(pid_in(&pid_file));
        }
    }

    #[test]
    fn stdout_is_never_buffered_past_the_cap() {
        let child = std::process::Command::new("/usr/bin/yes")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut group = Group::new(child);
        let (mut stdout, mut stderr) = group.pipes();
        let mut out = Vec::with_capacity(1001);
        let mut err = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        let ended = read_until(&mut stdout, &mut stderr, &mut out, &mut err, deadline).unwrap();
        assert!(matches!(ended, Ended::TooLarge));
        assert_eq!((out.len(), out.capacity()), (1001, 1001));
        drop((stdout, stderr));
        // Its pipe closed, `yes` may die of SIGPIPE before the kill reaches it.
        let signal = group.end().unwrap().signal();
        assert!(
            [Signal::SIGKILL as i32, Signal::SIGPIPE as i32]
                .map(Some)
                .contains(&signal),
            "{signal:?}"
        );
    }

    #[tokio::test]
    async fn a_chatty_stderr_does_not_block_the_command() {
        let cmd = sh("/usr/bin/head -c 1000000 /dev/zero >&2; echo tok", &[]);
        let (out, took) = run_timed(&cmd, Duration::from_secs(10)).await;
        assert_eq!(out.unwrap(), "tok");
        assert!(took < Duration::from_secs(3), "{took:?}");
    }

    #[tokio::test]
    async fn a_failure_shows_the_first_line_of_stderr_and_never_stdout() {
        let cmd = sh(
            r#"echo the-token; printf '\n  no credentials \033[31mred\nsecond line\n' >&2; exit 3"#,
            &[],
        );
        let err = run(&cmd, Duration::from_secs(10), CAP).await.unwrap_err();
        let text = err.to_string();
        assert!(err.is_transient());
        assert_eq!(
            text,
            r"exited with status 3; stderr: no credentials \u{1b}[31mred"
        );

        let long = sh(
            "/usr/bin/head -c 1000 /dev/zero | /usr/bin/tr '\\0' a >&2; exit 1",
            &[],
        );
        let text = run(&long, Duration::from_secs(10), CAP)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            text.ends_with(&format!(": {}...", "a".repeat(200))),
            "{text}"
        );

        let quiet = sh("echo the-token; exit 2", &[]);
        let text = run(&quiet, Duration::from_secs(10), CAP)
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(text, "exited with status 2 and wrote nothing to stderr");
    }

    #[tokio::test]
    async fn a_command_killed_by_a_signal_is_transient() {
        let err = run(&sh("kill -9 $$", &[]), Duration::from_secs(10), CAP)
            .await
            .unwrap_err();
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            "was killed by signal 9 (SIGKILL) and wrote nothing to stderr"
        );
    }

    #[tokio::test]
    async fn stdout_must_be_text_and_not_blank() {
        let binary = argv(&["/usr/bin/printf", r"tok\377\376"]);
        let err = run(&binary, Duration::from_secs(10), CAP)
            .await
            .unwrap_err();
        assert!(matches!(err, CommandError::NotText), "{err:?}");
        assert!(!err.is_transient());
        for blank in [argv(&["/bin/true"]), argv(&["/bin/echo", " \t "])] {
            let err = run(&blank, Duration::from_secs(10), CAP).await.unwrap_err();
            assert!(matches!(err, CommandError::Empty), "{err:?}");
            assert!(!err.is_transient());
        }
    }

    #[tokio::test]
    async fn the_token_is_stdout_trimmed_and_argv_reaches_it_unparsed() {
        let (out, _) =
            run_timed(&argv(&["/bin/echo", "  tok.en  "]), Duration::from_secs(10)).await;
        assert_eq!(out.unwrap(), "tok.en");
        let literal = argv(&["/usr/bin/printf", "%s", "$HOME;*`id`"]);
        let (out, _) = run_timed(&literal, Duration::from_secs(10)).await;
        assert_eq!(out.unwrap(), "$HOME;*`id`");
    }

    #[tokio::test]
    async fn the_command_inherits_the_environment_and_runs_in_the_root() {
        let path = std::env::var("PATH").expect("PATH is set for tests");
        let (out, _) = run_timed(
            &argv(&["/usr/bin/printenv", "PATH"]),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(out.unwrap(), path.trim());
        let (out, _) = run_timed(&argv(&["/bin/pwd"]), Duration::from_secs(10)).await;
        assert_eq!(out.unwrap(), "/");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_slow_command_leaves_the_async_worker_free() {
        let cmd = sh("/bin/sleep 1; echo tok", &[]);
        let counted = std::sync::atomic::AtomicU32::new(0);
        let count = async {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            loop {
                every.tick().await;
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        };
        tokio::select! {
            out = run(&cmd, Duration::from_secs(10), CAP) => {
                assert_eq!(out.unwrap().expose_secret(), "tok");
            }
            _ = count => unreachable!(),
        }
        let n = counted.load(std::sync::atomic::Ordering::Relaxed);
        assert!(n >= 30, "the worker ticked only {n} times in a 1 s run");
    }

    #[tokio::test]
    async fn programs_must_be_named_absolutely_and_exist() {
        let cases: [(Vec<String>, &str); 5] = [
            (vec![], "names no program"),
            (argv(&[""]), "names no program"),
            (argv(&["sh", "-c", "echo tok"]), "must be an absolute path"),
            (
                argv(&["/bin/echo", "a\0b"]),
                "argument 1 of the command holds a NUL",
            ),
            (
                argv(&["/nonexistent/tokend-test"]),
                "/nonexistent: cannot run it",
            ),
        ];
        for (cmd, says) in cases {
            let err = check(&cmd).unwrap_err();
            assert!(err.to_string().contains(says), "{cmd:?}: {err}");
            assert!(!err.is_transient(), "{cmd:?}: {err}");
            let err = run(&cmd, Duration::from_secs(10), CAP).await.unwrap_err();
            assert!(err.to_string().contains(says), "{cmd:?}: {err}");
        }
    }

    #[test]
    fn system_programs_pass_through_their_links() {
        // On merged-/usr systems /bin is a link to usr/bin, and /bin/sh one to dash or bash.
        for program in ["/bin/sh", "/usr/bin/printf", "/bin/../bin/echo"] {
            check(&argv(&[program])).unwrap_or_else(|e| panic!("{program}: {e}"));
        }
    }

    #[test]
    fn what_is_not_a_program_is_refused() {
        let err = check(&argv(&["/etc/passwd"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/etc/passwd: is not executable (mode 0644): chmod +x /etc/passwd"
        );
        for (path, kind) in [
            ("/usr/bin", "a directory"),
            ("/usr/bin/..", "a directory"),
            ("/dev/null", "a character device"),
        ] {
            let err = check(&argv(&[path])).unwrap_err();
            assert!(err.to_string().contains(kind), "{path}: {err}");
            assert!(!err.is_transient());
        }
    }

    /// A program in, or reached through, a directory others can write is refused, and never
    /// run. Temporary directories sit in /tmp, which is itself shared: the refusal names the
    /// first unsafe directory on the way, the temporary one or one above it.
    #[tokio::test]
    async fn a_program_others_could_replace_is_refused_and_not_run() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let ran = dir.path().join("ran");
        let script = open.join("token.sh");
        std::fs::write(
            &script,
            format!("#!/bin/sh\ntouch {}\necho tok\n", ran.display()),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("sh");
        std::os::unix::fs::symlink("/bin/sh", &link).unwrap();

        for program in [&script, &link] {
            let cmd = argv(&[program.to_str().unwrap()]);
            let err = check(&cmd).unwrap_err();
            let (CommandError::Writable { path, .. } | CommandError::Shared { path, .. }) = &err
            else {
                panic!("{program:?}: {err:?}");
            };
            assert!(
                program.starts_with(path) && path != program,
                "{program:?}: {err}"
            );
            assert!(!err.is_transient());
            let err = run(&cmd, Duration::from_secs(10), CAP).await.unwrap_err();
            assert!(!err.is_transient(), "{err}");
        }
        assert!(!ran.exists(), "the refused script ran");
    }

    #[test]
    fn owners_and_modes_that_keep_a_program_safe() {
        let p = Path::new("/opt/x");
        let ours = 1000;
        for (uid, mode) in [
            (0, 0o755),
            (ours, 0o700),
            (0, 0o1755),
            (0, 0o2755),
            (0, 0o40755),
        ] {
            judge(p, uid, mode, ours).unwrap_or_else(|e| panic!("{uid} {mode:o}: {e}"));
        }
        let err = judge(p, 1234, 0o755, ours).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/opt/x: is owned by uid 1234; a command's program and every directory above it must be owned by root or tokend's user (uid 1000), or its owner could make tokend run anything: chown root /opt/x"
        );
        for (mode, who) in [
            (0o775, "its group"),
            (0o757, "other users"),
            (0o777, "its group and other users"),
        ] {
            let err = judge(p, 0, mode, ours).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "/opt/x: is writable by {who} (mode 0{mode:o}), who could replace the program tokend runs: chmod go-w /opt/x"
                )
            );
        }
        let err = judge(p, 0, 0o41777, ours).unwrap_err();
        assert!(
            matches!(err, CommandError::Shared { mode: 0o1777, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("install it in a directory only root")
        );
    }

    #[test]
    fn spawn_errors_of_the_moment_are_transient() {
        let spawn = |errno: Errno| CommandError::Spawn {
            program: "/usr/bin/x".into(),
            source: io::Error::from_raw_os_error(errno as i32),
        };
        for errno in [
            Errno::EAGAIN,
            Errno::EMFILE,
            Errno::ENFILE,
            Errno::ENOMEM,
            Errno::ETXTBSY,
        ] {
            assert!(spawn(errno).is_transient(), "{errno}");
        }
        for errno in [Errno::ENOENT, Errno::EACCES, Errno::ENOEXEC, Errno::ENOTDIR] {
            assert!(!spawn(errno).is_transient(), "{errno}");
        }
    }
}
