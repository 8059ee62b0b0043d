//! Cgroups of the test's own, for callers that must run in a given systemd unit or pod: made
//! under the machine's cgroup v2 hierarchy (the tests run as root), removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Where the cgroup v2 hierarchy is mounted; a test that needs one fails saying so.
pub fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .find_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let mount_point = before.split(' ').nth(4)?;
            (after.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(mount_point))
        })
        .expect("no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo): the caller tests need one, writable by root")
}

/// A cgroup directory, with the parents it made removed on drop when empty.
pub struct Cgroup {
    root: PathBuf,
    pub dir: PathBuf,
}

impl Cgroup {
    /// `relative` below `slice` (a slice of the test's own, e.g. `tokend-test-PID.slice`).
    pub fn new(slice: &str, relative: &str) -> Cgroup {
        let root = cgroup2_mount();
        let dir = root.join(slice).join(relative);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| {
            panic!(
                "cannot create the cgroup {}: {e} (the test must run as root with the cgroup v2 hierarchy writable)",
                dir.display()
            )
        });
        Cgroup { root, dir }
    }

    /// The path its processes have in /proc/PID/cgroup.
    pub fn path(&self) -> String {
        format!("/{}", self.dir.strip_prefix(&self.root).unwrap().display())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // A process that has just exited may linger in it for a moment.
        for _ in 0..50 {
            match std::fs::remove_dir(&self.dir) {
                Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        let mut dir = self.dir.clone();
        while dir.pop() && dir != self.root {
            let _ = std::fs::remove_dir(&dir);
        }
    }
}

/// Runs `PROGRAM get CLIENT --socket SOCKET` (a new connection; PROGRAM is tokend or a copy),
/// first moved into `cgroup` if given: the exit code and the output.
pub fn get_in(
    cgroup: Option<&Cgroup>,
    program: &Path,
    socket: &Path,
    client: &str,
) -> (i32, String) {
    let mut command = match cgroup {
        // The shell moves itself, then execs the caller under the same pid.
        Some(cg) => {
            let mut c = Command::new("sh");
            c.arg("-c")
                .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
                .arg(&cg.dir)
                .arg(program);
            c
        }
        None => Command::new(program),
    };
    let out = command
        .args(["get", client, "--timeout", "10", "--socket"])
        .arg(socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}
