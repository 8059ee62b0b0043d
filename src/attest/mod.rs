//! What a caller is beyond its uid: its process as read at accept (`process`: executable,
//! cgroup, tied to the process by a pidfd), what its cgroup path says (`cgroup`: systemd unit,
//! Kubernetes pod and container), its pod's metadata at the kubelet (`kubelet`), and its
//! executable's digest (`digest`).

pub mod cgroup;
pub mod digest;
pub mod kubelet;
pub mod process;
