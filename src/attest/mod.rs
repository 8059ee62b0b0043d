#![allow(dead_code)] // TODO(lead): removed when the access rules use it
//! What the kernel and the kubelet say about a caller: the cgroup it runs in, and the systemd
//! unit, Kubernetes pod and container that cgroup names.

pub mod cgroup;
