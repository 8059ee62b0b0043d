//! `[[clients.NAME.allow]]` entries: each a set of selectors that must all match the caller, by
//! its uid and groups, its systemd unit, executable and cgroup, or its Kubernetes pod.
//!
//! Selectors on the process are answered from what was read at accept (`attest::process`);
//! `executable_sha256` and the pod selectors need a digest or a kubelet lookup, done once per
//! connection and remembered on it, so every later call is decided without either.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use serde::Deserialize;

use super::groups::{GroupDirectory, GroupMembers};
use crate::attest::digest::Digests;
use crate::attest::kubelet::{Kubelet, Pod};
use crate::attest::process::Process;
use crate::host::accounts::uid_of;

/// One allow entry as written: every selector set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Selectors {
    /// A user name or numeric uid.
    pub user: Option<String>,
    /// A group name or numeric gid: the caller's primary group or one it is listed in.
    pub group: Option<String>,
    /// The systemd unit of the caller's cgroup, e.g. `billing.service`.
    pub unit: Option<String>,
    /// The real path of the caller's executable...
    pub executable: Option<PathBuf>,
    /// ...and the SHA-256 its file must have (lowercase hex).
    pub executable_sha256: Option<String>,
    /// A cgroup path prefix, whole components: `/system.slice` matches
    /// `/system.slice/billing.service`, not `/system.slicer`.
    pub cgroup: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_service_account: Option<String>,
    pub pod_name: Option<String>,
    /// `key=value`: the pod has this label with this value.
    pub pod_label: Option<String>,
}

/// Unit types a process can run in (a slice only groups units).
const UNIT_SUFFIXES: &[&str] = &[".service", ".scope", ".socket", ".mount", ".swap"];

impl Selectors {
    /// Whether any pod selector is set (the kubelet is needed).
    pub fn names_pods(&self) -> bool {
        self.pod_namespace.is_some()
            || self.pod_service_account.is_some()
            || self.pod_name.is_some()
            || self.pod_label.is_some()
    }

    /// The entry in one line, for `tokend check`.
    pub fn explain(&self) -> String {
        let exe = self.executable.as_ref().map(|e| e.display().to_string());
        let parts: Vec<String> = [
            ("user", &self.user),
            ("group", &self.group),
            ("in unit", &self.unit),
            ("in cgroup", &self.cgroup),
            ("running", &exe),
            ("whose executable has SHA-256", &self.executable_sha256),
            ("in a pod of namespace", &self.pod_namespace),
            ("with service account", &self.pod_service_account),
            ("in the pod named", &self.pod_name),
            ("with pod label", &self.pod_label),
        ]
        .into_iter()
        .filter_map(|(what, v)| v.as_ref().map(|v| format!("{what} {v}")))
        .collect();
        format!("callers {}", parts.join(", "))
    }
}

/// An allow entry ready to match: names resolved, values checked.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    uid: Option<u32>,
    group: Option<Arc<GroupMembers>>,
    unit: Option<String>,
    executable: Option<PathBuf>,
    sha256: Option<[u8; 32]>,
    cgroup: Option<String>,
    pod: Option<PodRule>,
    /// The entry as written, for equality across reloads.
    spec: Selectors,
}

#[derive(Debug, Clone)]
struct PodRule {
    namespace: Option<String>,
    service_account: Option<String>,
    name: Option<String>,
    label: Option<(String, String)>,
    /// `None` outside the daemon (a config being checked): no pod is ever found.
    kubelet: Option<Arc<Kubelet>>,
}

/// How far a rule got with what is known so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Match,
    NoMatch,
    /// Everything known matches; the pod or the executable's digest must be looked up.
    Lookup,
}

/// The digests of every executable seen, shared by all rules.
static DIGESTS: LazyLock<Digests> = LazyLock::new(Digests::default);

impl Rule {
    /// Checks and resolves an entry. Errors name the selector and the reason.
    pub(super) fn resolve(
        spec: &Selectors,
        directory: &Arc<GroupDirectory>,
        kubelet: Option<&Arc<Kubelet>>,
    ) -> Result<Rule, (&'static str, String)> {
        if *spec == Selectors::default() {
            return Err((
                "allow",
                "an entry needs at least one selector (an empty one would let every caller in)"
                    .into(),
            ));
        }
        let uid = spec
            .user
            .as_deref()
            .map(uid_of)
            .transpose()
            .map_err(|r| ("user", r))?;
        let group = match &spec.group {
            Some(g) => Some(directory.member_list(g).map_err(|r| ("group", r))?),
            None => None,
        };
        if let Some(unit) = &spec.unit
            && (unit.contains('/') || !UNIT_SUFFIXES.iter().any(|s| unit.ends_with(s)))
        {
            return Err((
                "unit",
                format!(
                    "{unit:?} is not a unit a process runs in: a name ending in {}",
                    UNIT_SUFFIXES.join(", ")
                ),
            ));
        }
        if let Some(exe) = &spec.executable
            && !exe.is_absolute()
        {
            return Err((
                "executable",
                format!("{} must be an absolute path", exe.display()),
            ));
        }
        let sha256 = match &spec.executable_sha256 {
            Some(_) if spec.executable.is_none() => {
                return Err((
                    "executable_sha256",
                    "needs executable: the digest is of that program".into(),
                ));
            }
            Some(hex) => Some(parse_sha256(hex).ok_or((
                "executable_sha256",
                "must be 64 hexadecimal digits (sha256sum's output)".to_string(),
            ))?),
            None => None,
        };
        let cgroup = match &spec.cgroup {
            Some(c) if !c.starts_with('/') => {
                return Err((
                    "cgroup",
                    format!("{c:?} must be an absolute cgroup path, as in /proc/PID/cgroup"),
                ));
            }
            // "/" stays "/" (every cgroup); "/a/" is "/a".
            Some(c) => Some(match c.trim_end_matches('/') {
                "" => "/".to_string(),
                trimmed => trimmed.to_string(),
            }),
            None => None,
        };
        let label = match &spec.pod_label {
            Some(l) => match l.split_once('=') {
                Some((k, v)) if !k.is_empty() => Some((k.to_string(), v.to_string())),
                _ => {
                    return Err((
                        "pod_label",
                        format!("{l:?} must be \"key=value\" with a key"),
                    ));
                }
            },
            None => None,
        };
        let pod = spec.names_pods().then(|| PodRule {
            namespace: spec.pod_namespace.clone(),
            service_account: spec.pod_service_account.clone(),
            name: spec.pod_name.clone(),
            label,
            kubelet: kubelet.cloned(),
        });
        Ok(Rule {
            uid,
            group,
            unit: spec.unit.clone(),
            executable: spec.executable.clone(),
            sha256,
            cgroup,
            pod,
            spec: spec.clone(),
        })
    }

    pub(super) fn spec(&self) -> &Selectors {
        &self.spec
    }

    /// Decides with what is known without a lookup.
    pub(super) fn check(&self, uid: u32, gid: u32, process: Option<&Process>) -> Verdict {
        if self.uid.is_some_and(|u| u != uid) {
            return Verdict::NoMatch;
        }
        if let Some(group) = &self.group
            && !(group.gid() == gid || group.has(uid))
        {
            return Verdict::NoMatch;
        }
        if !self.needs_process() {
            return Verdict::Match;
        }
        let Some(p) = process else {
            return Verdict::NoMatch;
        };
        if let Some(unit) = &self.unit
            && p.cgroup.unit.as_deref() != Some(unit.as_str())
        {
            return Verdict::NoMatch;
        }
        if let Some(prefix) = &self.cgroup
            && !p.cgroup.path.as_deref().is_some_and(|c| under(c, prefix))
        {
            return Verdict::NoMatch;
        }
        if let Some(exe) = &self.executable
            && p.exe.as_ref().is_none_or(|e| e.path != *exe)
        {
            return Verdict::NoMatch;
        }
        let mut lookup = false;
        if let Some(want) = &self.sha256 {
            match p.exe_sha256.get() {
                Some(got) if got.as_ref() == Some(want) => {}
                Some(_) => return Verdict::NoMatch,
                None => lookup = true,
            }
        }
        if let Some(rule) = &self.pod {
            if p.cgroup.pod_uid.is_none() && p.cgroup.container_id.is_none() {
                return Verdict::NoMatch;
            }
            match p.pod.get() {
                Some(pod) if !rule.matches(pod) => return Verdict::NoMatch,
                Some(_) => {}
                None if rule.kubelet.is_none() => return Verdict::NoMatch,
                None => lookup = true,
            }
        }
        if lookup {
            Verdict::Lookup
        } else {
            Verdict::Match
        }
    }

    /// Looks up what [`Rule::check`] lacked for `process`, remembering it on the process.
    pub(super) async fn look_up(&self, process: &Process) {
        if self.sha256.is_some()
            && process.exe_sha256.get().is_none()
            && let Some(exe) = &process.exe
        {
            let digest = DIGESTS.of(exe).await;
            let _ = process.exe_sha256.set(digest);
        }
        if let Some(kubelet) = self.pod.as_ref().and_then(|p| p.kubelet.as_ref())
            && process.pod.get().is_none()
        {
            let found = kubelet
                .pod(
                    process.cgroup.pod_uid.as_deref(),
                    process.cgroup.container_id.as_deref(),
                )
                .await;
            // A pod not (yet) listed is looked up again by a later call: a container can call
            // before the kubelet lists it.
            if let Ok(Some(pod)) = found {
                let _ = process.pod.set(pod);
            }
        }
    }

    /// Whether the answer needs anything read from the caller's process.
    fn needs_process(&self) -> bool {
        self.unit.is_some()
            || self.executable.is_some()
            || self.cgroup.is_some()
            || self.pod.is_some()
    }
}

impl PodRule {
    fn matches(&self, pod: &Pod) -> bool {
        let is = |want: &Option<String>, got: &str| want.as_deref().is_none_or(|w| w == got);
        is(&self.namespace, &pod.namespace)
            && is(&self.service_account, &pod.service_account)
            && is(&self.name, &pod.name)
            && self
                .label
                .as_ref()
                .is_none_or(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// Whether cgroup `path` is `prefix` or below it.
fn under(path: &str, prefix: &str) -> bool {
    let (path, prefix) = (Path::new(path), Path::new(prefix));
    path.starts_with(prefix)
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{Access, Caller, Decision, Granted, Rules};
    use super::*;
    use crate::attest::cgroup::CgroupInfo;
    use crate::attest::process::{Executable, FileVersion};

    fn process(unit: &str, cgroup: &str, exe: &str) -> Arc<Process> {
        Arc::new(Process {
            pid: 4242,
            exe: Some(Executable {
                path: exe.into(),
                file: FileVersion {
                    dev: 1,
                    ino: 2,
                    size: 3,
                    mtime: (4, 5),
                    ctime: (6, 7),
                },
            }),
            cgroup: CgroupInfo {
                path: Some(cgroup.into()),
                unit: Some(unit.into()),
                ..CgroupInfo::default()
            },
            pod: Default::default(),
            exe_sha256: Default::default(),
        })
    }

    fn caller(uid: u32, process: Arc<Process>) -> Caller {
        Caller::Local {
            uid,
            gid: uid,
            pid: Some(process.pid),
            process: Ok(process),
        }
    }

    fn access(entries: &[Selectors]) -> Access {
        let rules = Rules {
            allow: entries,
            ..Rules::default()
        };
        Access::resolve(rules, None).unwrap()
    }

    fn entry(toml_text: &str) -> Selectors {
        #[derive(serde::Deserialize)]
        struct One {
            allow: Vec<Selectors>,
        }
        let one: One = config::Config::builder()
            .add_source(config::File::from_str(toml_text, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize()
            .unwrap();
        one.allow.into_iter().next().unwrap()
    }

    #[test]
    fn every_selector_of_an_entry_must_match_and_any_entry_will_do() {
        let a = access(&[
            entry("[[allow]]\nunit = \"billing.service\"\nuser = \"1000\""),
            entry("[[allow]]\nexecutable = \"/usr/bin/report\"\ncgroup = \"/system.slice\""),
        ]);
        let billing = process(
            "billing.service",
            "/system.slice/billing.service",
            "/usr/bin/x",
        );
        assert_eq!(
            a.decide(&caller(1000, billing.clone())),
            Decision::Allowed(Granted::Entry(0))
        );
        assert_eq!(
            a.decide(&caller(1001, billing)),
            Decision::Denied,
            "uid too"
        );
        let report = process(
            "cron.service",
            "/system.slice/cron.service",
            "/usr/bin/report",
        );
        assert_eq!(
            a.decide(&caller(0, report)),
            Decision::Allowed(Granted::Entry(1))
        );
        let user_report = process("app.scope", "/user.slice/app.scope", "/usr/bin/report");
        assert_eq!(a.decide(&caller(0, user_report)), Decision::Denied);
    }

    #[test]
    fn cgroup_prefixes_are_whole_components() {
        let a = access(&[entry("[[allow]]\ncgroup = \"/system.slice/\"")]);
        let at = |path: &str| a.decide(&caller(7, process("x.service", path, "/bin/x")));
        assert!(matches!(
            at("/system.slice/x.service"),
            Decision::Allowed(_)
        ));
        assert!(matches!(at("/system.slice"), Decision::Allowed(_)));
        assert_eq!(at("/system.slicer/x.service"), Decision::Denied);
        assert_eq!(at("/user.slice/system.slice"), Decision::Denied);
    }

    #[test]
    fn a_caller_without_attributes_matches_no_process_selector() {
        let a = access(&[
            entry("[[allow]]\nunit = \"billing.service\""),
            entry("[[allow]]\nuser = \"1000\""),
        ]);
        let gone = |uid| Caller::Local {
            uid,
            gid: uid,
            pid: Some(1),
            process: Err(crate::attest::process::Unattested::PidReused),
        };
        assert_eq!(a.decide(&gone(7)), Decision::Denied);
        assert_eq!(a.decide(&gone(1000)), Decision::Allowed(Granted::Entry(1)));
        assert_eq!(a.decide(&Caller::Unknown), Decision::Denied);
        assert_eq!(a.decide(&Caller::Tcp), Decision::Denied);
    }

    #[tokio::test]
    async fn executable_digests_are_looked_up_once_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let prog = dir.path().join("prog");
        std::fs::write(&prog, b"#!/bin/true\n").unwrap();
        let digest: String = {
            use sha2::Digest;
            sha2::Sha256::digest(b"#!/bin/true\n")
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        };
        let p = Arc::new(Process {
            exe: Some(Executable {
                path: prog.clone(),
                file: FileVersion::of(&std::fs::metadata(&prog).unwrap()),
            }),
            ..Arc::try_unwrap(process("a.service", "/a", "/x")).unwrap()
        });
        let spec = |sha: &str| {
            entry(&format!(
                "[[allow]]\nexecutable = \"{}\"\nexecutable_sha256 = \"{sha}\"",
                prog.display()
            ))
        };
        let right = access(&[spec(&digest)]);
        let wrong = access(&[spec(&"0".repeat(64))]);
        let c = caller(5, p.clone());
        assert_eq!(right.decide(&c), Decision::Lookup);
        assert_eq!(right.admit(&c).await, Some(Granted::Entry(0)));
        // Remembered: decided without a lookup from now on, by either rule.
        assert_eq!(right.decide(&c), Decision::Allowed(Granted::Entry(0)));
        assert_eq!(wrong.decide(&c), Decision::Denied);
        assert_eq!(wrong.admit(&c).await, None);
    }

    #[test]
    fn pods_match_by_namespace_account_name_and_label() {
        let a = access(&[entry(
            "[[allow]]\npod_namespace = \"billing\"\npod_service_account = \"api\"\npod_label = \"tier=web\"",
        )]);
        let in_pod = |ns: &str, sa: &str, labels: &[(&str, &str)]| {
            let mut p =
                Arc::try_unwrap(process("cri-containerd-x.scope", "/kubepods", "/app")).unwrap();
            p.cgroup.pod_uid = Some("0e5b6c3a-1d2f-4c4e-9a6b-2b1f0c8d9e7a".into());
            let pod = Pod {
                uid: "0e5b6c3a-1d2f-4c4e-9a6b-2b1f0c8d9e7a".into(),
                namespace: ns.into(),
                name: "api-7d9f".into(),
                service_account: sa.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                container_ids: Vec::new(),
                mirror_uid: None,
            };
            p.pod.set(Arc::new(pod)).unwrap();
            caller(65532, Arc::new(p))
        };
        assert_eq!(
            a.decide(&in_pod("billing", "api", &[("tier", "web")])),
            Decision::Allowed(Granted::Entry(0))
        );
        assert_eq!(
            a.decide(&in_pod("billing", "api", &[("tier", "db")])),
            Decision::Denied
        );
        assert_eq!(
            a.decide(&in_pod("billing", "default", &[("tier", "web")])),
            Decision::Denied
        );
        assert_eq!(
            a.decide(&in_pod("ops", "api", &[("tier", "web")])),
            Decision::Denied
        );
        // Not in a pod at all: no lookup either.
        let host = caller(
            0,
            process("billing.service", "/system.slice/billing.service", "/app"),
        );
        assert_eq!(a.decide(&host), Decision::Denied);
    }

    #[test]
    fn entries_are_explained_in_one_line() {
        let e = entry("[[allow]]\nuser = \"alice\"\nunit = \"billing.service\"\npod_name = \"x\"");
        assert_eq!(
            e.explain(),
            "callers user alice, in unit billing.service, in the pod named x"
        );
    }
}
