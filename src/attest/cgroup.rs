//! A caller's `/proc/PID/cgroup`, read for the systemd unit it runs in and, for a Kubernetes
//! workload, its pod and container.
//!
//! The kernel writes that file, so a process cannot choose its lines; but whoever is delegated a
//! cgroup subtree (a user's own systemd, a container given its cgroup tree) can name the cgroups
//! below it anything. So only the names the system's systemd, the kubelet and the container
//! runtimes give are read, where they give them: the unit is the first cgroup below the slices,
//! and nothing below a user's manager (`user@UID.service`) names a pod or a container.
//!
//! Paths are as tokend's own cgroup namespace shows them. A namespace that hides a pod's
//! `kubepods` ancestors (`0::/../../pod<uid>/<id>` seen from inside another pod) hides the pod
//! too: tokend must run in the host's cgroup namespace for pods to be recognized.

/// Lines read: the kernel writes one per cgroup hierarchy, of which there are a dozen or so.
const MAX_LINES: usize = 64;

/// The longest path read, the kernel's `PATH_MAX`; kubelet and systemd paths are a few hundred
/// bytes.
const MAX_PATH: usize = 4096;

/// The longest unit name systemd accepts (`UNIT_NAME_MAX`, less its NUL).
const MAX_UNIT_NAME: usize = 255;

/// The kinds of systemd unit that have a cgroup of their own, besides slices (which only hold
/// other units): a `.target`, `.device` or `.timer` is never a cgroup.
const UNIT_KINDS: [&str; 5] = [".service", ".scope", ".socket", ".mount", ".swap"];

/// The runtimes' names for a container's scope under systemd (`<runtime>-<id>.scope`):
/// containerd's CRI plugin, CRI-O, Docker (also under cri-dockerd) and Podman. CRI-O's and
/// Podman's monitor, `crio-conmon-<id>.scope` and `libpod-conmon-<id>.scope`, is not the
/// container.
const SCOPE_RUNTIMES: [&str; 4] = ["cri-containerd-", "crio-", "docker-", "libpod-"];

/// The length of a pod UID in its canonical form, `8-4-4-4-12` hex digits.
const UID_LEN: usize = 36;

/// The length of a container ID: 32 bytes in hex.
const CONTAINER_ID_LEN: usize = 64;

/// What a caller's cgroup membership says about it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CgroupInfo {
    /// The path `cgroup` prefix selectors match: the unified (v2) hierarchy's, else the v1
    /// `name=systemd` hierarchy's, else the first other v1 hierarchy's; never the root "/",
    /// which says nothing. The unified hierarchy comes first because that is where systemd
    /// itself looks (`sd_pid_get_unit`), on a hybrid host too.
    pub path: Option<String>,
    /// The system manager's unit the process runs in, e.g. "billing.service",
    /// "session-3.scope", "getty@tty1.service": the first component of [`path`](Self::path)
    /// below its slices, when that is a unit. Anything below it is the unit's own (delegated)
    /// business, so `.../app.service/worker` is "app.service" and a user's units are
    /// "user@1000.service", see [`user_unit`](Self::user_unit). Docker's containers are
    /// `docker-<id>.scope`, a pod's containers their runtime's scope, or nothing with the
    /// cgroupfs driver.
    pub unit: Option<String>,
    /// The unit a user's own systemd (the `user@UID.service` that is [`unit`](Self::unit)) runs
    /// the process in, e.g. "app-foo.scope" for
    /// `/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope`. Its name is the
    /// user's choice: only as good as the user's word.
    pub user_unit: Option<String>,
    /// The Kubernetes pod UID, in its canonical dashed lowercase form (36 characters): only with
    /// a [`container_id`](Self::container_id), from the kubelet's pod cgroup nearest above it
    /// (`pod<uid>` under `kubepods[/burstable|/besteffort]`, or a
    /// `kubepods[-burstable|-besteffort]-pod<uid>.slice`). A hierarchy whose line names a pod
    /// outweighs one whose line does not.
    pub pod_uid: Option<String>,
    /// The container ID (64 lowercase hex characters): the innermost cgroup named by a
    /// container runtime, `<id>`, `crio-<id>` or `<runtime>-<id>.scope`, so that a container in
    /// a container (kind's nodes) gives the inner one. None when the cgroup hierarchies
    /// disagree: a choice between two would be a guess.
    pub container_id: Option<String>,
}

/// Parses the content of /proc/PID/cgroup. Bounded: ignores lines beyond 64 and paths longer
/// than 4096 bytes; malformed lines are skipped, never a panic.
pub fn parse(proc_cgroup: &str) -> CgroupInfo {
    let (mut unified, mut systemd, mut other) = (None, None, None);
    // A line that names a pod outweighs one that does not: on kind, the unified hierarchy can
    // show the node's own container while the v1 hierarchies show the pod's.
    let (mut with_pod, mut without_pod) = (Agreed::Nothing, Agreed::Nothing);
    for line in proc_cgroup.lines().take(MAX_LINES) {
        let Some((hierarchy, path)) = entry(line) else {
            continue;
        };
        if path != "/" {
            let slot = match hierarchy {
                Hierarchy::Unified => &mut unified,
                Hierarchy::Systemd => &mut systemd,
                Hierarchy::Other => &mut other,
            };
            slot.get_or_insert(path);
        }
        if let Some(ids) = workload(path) {
            match ids.pod {
                Some(_) => with_pod.add(ids),
                None => without_pod.add(ids),
            }
        }
    }
    let path = unified.or(systemd).or(other);
    let (unit, user_unit) = path.map_or((None, None), units);
    let ids = match with_pod {
        Agreed::Nothing => without_pod.answer(),
        with_pod => with_pod.answer(),
    };
    CgroupInfo {
        path: path.map(str::to_owned),
        unit: unit.map(str::to_owned),
        user_unit: user_unit.map(str::to_owned),
        pod_uid: ids.and_then(|i| i.pod).map(|uid| uid.replace('_', "-")),
        container_id: ids.map(|i| i.container.to_owned()),
    }
}

/// Which hierarchy a line is of, as far as choosing [`CgroupInfo::path`] goes.
enum Hierarchy {
    Unified,
    Systemd,
    Other,
}

/// A line's hierarchy and path: `0::<path>` (unified) or `<id>:<controllers>:<path>` (v1); the
/// path, after the second colon, may hold colons of its own.
fn entry(line: &str) -> Option<(Hierarchy, &str)> {
    let mut fields = line.trim_ascii_end().splitn(3, ':');
    let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !path.starts_with('/') || path.len() > MAX_PATH {
        return None;
    }
    let hierarchy = match (id, controllers) {
        ("0", "") => Hierarchy::Unified,
        ("0", _) | (_, "") => return None,
        (_, list) if list.split(',').any(|c| c == "name=systemd") => Hierarchy::Systemd,
        _ => Hierarchy::Other,
    };
    Some((hierarchy, path))
}

/// The system manager's unit in `path` and, when that is a user's manager, the user's unit.
fn units(path: &str) -> (Option<&str>, Option<&str>) {
    let mut components = path.split('/').filter(|c| !c.is_empty());
    let unit = first_unit(&mut components);
    let user_unit = unit
        .filter(|u| is_user_manager(u))
        .and_then(|_| first_unit(&mut components));
    (unit, user_unit)
}

/// The first component that is not a slice, if it is a unit: systemd puts units only in
/// slices, so whatever lies below a unit was named by what runs in it. A path that climbs out
/// of tokend's namespace (`/../..`) does not show where its slices start, and gives none.
fn first_unit<'a>(components: &mut impl Iterator<Item = &'a str>) -> Option<&'a str> {
    components
        .find(|c| !c.ends_with(".slice"))
        .filter(|c| is_unit(c))
}

/// Whether `name` is a unit of a kind with a cgroup, in the characters systemd allows.
fn is_unit(name: &str) -> bool {
    name.len() <= MAX_UNIT_NAME
        && UNIT_KINDS.iter().any(|kind| {
            name.strip_suffix(kind).is_some_and(|stem| {
                !stem.is_empty()
                    && stem
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
            })
        })
}

/// Whether a component is a user's systemd, whose cgroup subtree is the user's to name.
fn is_user_manager(component: &str) -> bool {
    component.starts_with("user@") && component.ends_with(".service")
}

/// A container, and the pod it is in, as one line names them.
#[derive(Clone, Copy)]
struct Ids<'a> {
    /// As the path spells it: systemd's slices write the UID's dashes as underscores.
    pod: Option<&'a str>,
    container: &'a str,
}

impl Ids<'_> {
    fn same(&self, other: &Ids<'_>) -> bool {
        let same_pod = match (self.pod, other.pod) {
            (Some(a), Some(b)) => a.bytes().map(dash).eq(b.bytes().map(dash)),
            (a, b) => a.is_none() && b.is_none(),
        };
        same_pod && self.container == other.container
    }
}

/// A UID byte with systemd's underscore read as the dash it stands for.
fn dash(b: u8) -> u8 {
    if b == b'_' { b'-' } else { b }
}

/// What the lines seen so far agree on.
enum Agreed<'a> {
    Nothing,
    One(Ids<'a>),
    Conflict,
}

impl<'a> Agreed<'a> {
    fn add(&mut self, ids: Ids<'a>) {
        match self {
            Agreed::Nothing => *self = Agreed::One(ids),
            Agreed::One(seen) if seen.same(&ids) => {}
            Agreed::One(_) | Agreed::Conflict => *self = Agreed::Conflict,
        }
    }

    fn answer(self) -> Option<Ids<'a>> {
        match self {
            Agreed::One(ids) => Some(ids),
            Agreed::Nothing | Agreed::Conflict => None,
        }
    }
}

/// The innermost container `path` names, with the pod nearest above it. Components are split
/// at colons too: containerd's systemd cgroup paths on v1 read
/// `kubepods-besteffort-pod<uid>.slice:cri-containerd:<id>`.
fn workload(path: &str) -> Option<Ids<'_>> {
    // The two components above the current one, nearest first.
    let mut above = ["", ""];
    let mut pod = None;
    let mut found = None;
    for component in path.split(['/', ':']).filter(|c| !c.is_empty()) {
        if is_user_manager(component) {
            break;
        }
        if let Some(uid) = pod_uid(component, above) {
            pod = Some(uid);
        } else if let Some(container) = container_id(component) {
            found = Some(Ids { pod, container });
        }
        above = [component, above[0]];
    }
    found
}

/// The UID in a kubelet pod cgroup: `pod<uid>` right under `kubepods` or under its
/// `burstable` or `besteffort` child (the cgroupfs driver), or the systemd driver's
/// `kubepods[-burstable|-besteffort]-pod<uid>.slice`, its dashes written as underscores, with
/// any slice prefix the kubelet's cgroup root adds (kind's `kubelet-kubepods-...`).
fn pod_uid<'a>(component: &'a str, [parent, grandparent]: [&str; 2]) -> Option<&'a str> {
    if let Some(uid) = component.strip_prefix("pod") {
        let in_kubepods = parent == "kubepods"
            || (matches!(parent, "burstable" | "besteffort") && grandparent == "kubepods");
        return (in_kubepods && is_uid(uid, b'-')).then_some(uid);
    }
    let name = component.strip_suffix(".slice")?;
    let (head, uid) = name.split_at_checked(name.len().checked_sub(UID_LEN)?)?;
    let qos = head.strip_suffix("-pod")?;
    let kubepods = qos
        .strip_suffix("-burstable")
        .or_else(|| qos.strip_suffix("-besteffort"))
        .unwrap_or(qos);
    let in_kubepods = kubepods == "kubepods" || kubepods.ends_with("-kubepods");
    (in_kubepods && (is_uid(uid, b'_') || is_uid(uid, b'-'))).then_some(uid)
}

/// Whether `text` is a UID, lowercase hex in groups of 8-4-4-4-12 parted by `separator`.
fn is_uid(text: &str, separator: u8) -> bool {
    text.len() == UID_LEN
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == separator,
            _ => is_lower_hex(b),
        })
}

/// The ID in a container's cgroup: `<id>` (containerd and Docker with the cgroupfs driver),
/// `crio-<id>` (CRI-O with cgroupfs), or `<runtime>-<id>.scope` (with systemd).
fn container_id(component: &str) -> Option<&str> {
    let id = match component.strip_suffix(".scope") {
        Some(scope) => SCOPE_RUNTIMES
            .iter()
            .find_map(|runtime| scope.strip_prefix(runtime))?,
        None => component.strip_prefix("crio-").unwrap_or(component),
    };
    (id.len() == CONTAINER_ID_LEN && id.bytes().all(is_lower_hex)).then_some(id)
}

fn is_lower_hex(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'f')
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0e5b6c3a-1d2f-4c4e-9a6b-2b1f0c8d9e7a";
    const UID_SYSTEMD: &str = "0e5b6c3a_1d2f_4c4e_9a6b_2b1f0c8d9e7a";
    const ID: &str = "3b8f2c1d9e0a4b5c6d7e8f901a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d";
    const ID2: &str = "aff34703e5e1f89443e9a1bffcc80f43f74d4808a2dd22c8f88c08547b323934";

    /// What `parse` found of the pod and the container.
    fn workload_of(text: &str) -> (Option<String>, Option<String>) {
        let info = parse(text);
        (info.pod_uid, info.container_id)
    }

    fn some(uid: &str, id: &str) -> (Option<String>, Option<String>) {
        (Some(uid.to_string()), Some(id.to_string()))
    }

    fn container_only(id: &str) -> (Option<String>, Option<String>) {
        (None, Some(id.to_string()))
    }

    const NOTHING: (Option<String>, Option<String>) = (None, None);

    #[test]
    fn v2_systemd_driver_containerd_burstable() {
        let text = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        );
        let info = parse(&text);
        assert_eq!(info.pod_uid.as_deref(), Some(UID));
        assert_eq!(info.container_id.as_deref(), Some(ID));
        assert_eq!(info.path.as_deref(), Some(&text.trim_end()[3..]));
        assert_eq!(
            info.unit,
            Some(format!("cri-containerd-{ID}.scope")),
            "the runtime's scope is the unit systemd knows"
        );
        assert_eq!(info.user_unit, None);
    }

    #[test]
    fn v2_systemd_driver_besteffort_and_guaranteed() {
        let besteffort = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(workload_of(&besteffort), some(UID, ID));
        let guaranteed = format!(
            "0::/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(workload_of(&guaranteed), some(UID, ID));
    }

    #[test]
    fn v2_systemd_driver_cri_o_and_docker() {
        let crio = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-{ID}.scope\n"
        );
        assert_eq!(workload_of(&crio), some(UID, ID));
        // cri-dockerd: Docker names the scope.
        let docker = format!(
            "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/docker-{ID}.scope\n"
        );
        assert_eq!(workload_of(&docker), some(UID, ID));
        // CRI-O 1.2x with crun puts the container's processes one level further down.
        let nested = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-{ID}.scope/container\n"
        );
        assert_eq!(workload_of(&nested), some(UID, ID));
    }

    #[test]
    fn conmon_is_not_the_container_nor_the_pod() {
        // conmon_cgroup = "pod": the monitor sits in the pod's slice, beside the container.
        let in_pod = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_SYSTEMD}.slice/crio-conmon-{ID}.scope\n"
        );
        let info = parse(&in_pod);
        assert_eq!((info.pod_uid, info.container_id), NOTHING);
        assert_eq!(info.unit, Some(format!("crio-conmon-{ID}.scope")));
        // spiffe/spire#4088: conmon_cgroup = "system.slice", on cgroup v1.
        let in_system = [
            format!("12:pids:/system.slice/crio-conmon-{ID}.scope"),
            "11:hugetlb:/".to_string(),
            format!("10:memory:/system.slice/crio-conmon-{ID}.scope"),
            "9:cpuset:/".to_string(),
            format!("1:name=systemd:/system.slice/crio-conmon-{ID}.scope"),
            "0::/".to_string(),
        ]
        .join("\n");
        let info = parse(&in_system);
        assert_eq!((info.pod_uid, info.container_id), NOTHING);
        assert_eq!(
            info.path,
            Some(format!("/system.slice/crio-conmon-{ID}.scope"))
        );
        // Podman's monitor likewise.
        let podman = format!("0::/machine.slice/libpod-conmon-{ID}.scope\n");
        assert_eq!(workload_of(&podman), NOTHING);
    }

    #[test]
    fn v2_cgroupfs_driver_every_qos_class() {
        for qos in ["/burstable", "/besteffort", ""] {
            let text = format!("0::/kubepods{qos}/pod{UID}/{ID}\n");
            let info = parse(&text);
            assert_eq!((info.pod_uid, info.container_id), some(UID, ID), "{text}");
            assert_eq!(info.unit, None, "{text}: no systemd unit");
        }
        // CRI-O with cgroupfs names the container's cgroup crio-<id>.
        let crio = format!("0::/kubepods/besteffort/pod{UID}/crio-{ID}\n");
        assert_eq!(workload_of(&crio), some(UID, ID));
        // Docker Desktop's kubelet: kubepods twice (spiffe/spire#1547).
        let desktop = format!("0::/kubepods/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(workload_of(&desktop), some(UID, ID));
    }

    #[test]
    fn v1_cgroupfs_driver_every_hierarchy() {
        let text = [
            "12:memory:",
            "11:hugetlb:",
            "10:devices:",
            "9:pids:",
            "8:perf_event:",
            "7:net_cls,net_prio:",
            "6:cpuset:",
            "5:rdma:",
            "4:cpu,cpuacct:",
            "3:freezer:",
            "2:blkio:",
            "1:name=systemd:",
        ]
        .iter()
        .map(|h| {
            if h.starts_with("5:") {
                format!("{h}/")
            } else {
                format!("{h}/kubepods/burstable/pod{UID}/{ID}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
        let info = parse(&text);
        assert_eq!((info.pod_uid, info.container_id), some(UID, ID));
        assert_eq!(
            info.path,
            Some(format!("/kubepods/burstable/pod{UID}/{ID}")),
            "name=systemd's"
        );
    }

    #[test]
    fn v1_systemd_driver_docker() {
        // spiffe/spire#949 and #3183.
        let path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/docker-{ID}.scope"
        );
        let text =
            format!("11:blkio:{path}\n10:memory:{path}\n3:rdma:/\n1:name=systemd:{path}\n0::/\n");
        let info = parse(&text);
        assert_eq!((info.pod_uid, info.container_id), some(UID, ID));
        assert_eq!(info.path.as_deref(), Some(path.as_str()));
        assert_eq!(info.unit, Some(format!("docker-{ID}.scope")));
        // Older kubelets kept the dashes in the slice name.
        let dashed = format!(
            "1:name=systemd:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID}.slice/docker-{ID}.scope\n"
        );
        assert_eq!(workload_of(&dashed), some(UID, ID));
    }

    #[test]
    fn v1_containerd_systemd_path_with_colons() {
        // spiffe/spire#1580: runc's "slice:prefix:name" form, colons inside the path.
        let text =
            format!("11:memory:/kubepods-besteffort-pod{UID_SYSTEMD}.slice:cri-containerd:{ID}\n");
        let info = parse(&text);
        assert_eq!((info.pod_uid, info.container_id), some(UID, ID));
        assert_eq!(
            info.path,
            Some(format!(
                "/kubepods-besteffort-pod{UID_SYSTEMD}.slice:cri-containerd:{ID}"
            ))
        );
    }

    #[test]
    fn hybrid_host_paths_come_from_the_unified_hierarchy() {
        // spire's systemd_crio_cgroups_pid_in_pod fixture: the pod in v1, the runtime's service
        // in the unified hierarchy, which is where systemd looks for the unit.
        let pod_path = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"
        );
        let text = format!(
            "12:hugetlb:{pod_path}\n7:memory:{pod_path}\n3:rdma:/\n1:name=systemd:{pod_path}\n0::/system.slice/crio.service\n"
        );
        let info = parse(&text);
        assert_eq!((info.pod_uid, info.container_id), some(UID, ID));
        assert_eq!(info.path.as_deref(), Some("/system.slice/crio.service"));
        assert_eq!(info.unit.as_deref(), Some("crio.service"));
    }

    #[test]
    fn docker_outside_kubernetes() {
        let v2 = format!("0::/system.slice/docker-{ID}.scope\n");
        let info = parse(&v2);
        assert_eq!((info.pod_uid, info.container_id), container_only(ID));
        assert_eq!(info.unit, Some(format!("docker-{ID}.scope")));
        // cgroupfs driver, v1; the unified line shows containerd's service (ctrsploit#280).
        let v1 = format!(
            "12:net_cls,net_prio:/docker/{ID}\n10:rdma:/\n8:memory:/docker/{ID}\n1:name=systemd:/docker/{ID}\n0::/system.slice/containerd.service\n"
        );
        let info = parse(&v1);
        assert_eq!((info.pod_uid, info.container_id), container_only(ID));
        assert_eq!(info.unit.as_deref(), Some("containerd.service"));
    }

    #[test]
    fn kind_nodes_give_the_inner_container() {
        // spiffe/spire#1081: kind's node is a Docker container, the pod is inside it.
        let node = "8d461fa5765781bcf5f7eb192f101bc3103d4b932e26236f43feecfa20664f96";
        let path = format!("/docker/{node}/kubepods/besteffort/pod{UID}/{ID}");
        let v1 = format!("13:name=systemd:{path}\n12:pids:{path}\n");
        assert_eq!(workload_of(&v1), some(UID, ID));
        // kind on macOS: the unified line shows only the node (spire's extract.go); a line
        // with a pod outweighs it, in either order.
        let unified = format!("0::/docker/{node}/system.slice/containerd.service");
        assert_eq!(workload_of(&format!("{v1}{unified}\n")), some(UID, ID));
        assert_eq!(workload_of(&format!("{unified}\n{v1}")), some(UID, ID));
        // cgroup v2 with the host's namespace, and kind's systemd driver naming.
        let v2 = format!("0::/system.slice/docker-{node}.scope/kubepods/burstable/pod{UID}/{ID}\n");
        assert_eq!(workload_of(&v2), some(UID, ID));
        let kind_systemd = format!(
            "0::/system.slice/docker-{node}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        );
        let info = parse(&kind_systemd);
        assert_eq!((info.pod_uid, info.container_id), some(UID, ID));
        assert_eq!(
            info.unit,
            Some(format!("docker-{node}.scope")),
            "the host's unit"
        );
        // k3s and others with a cgroup root of their own (spiffe/spire#2578).
        let k3s = format!("0::/kubelet/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(workload_of(&k3s), some(UID, ID));
    }

    #[test]
    fn the_innermost_container_and_the_pod_above_it() {
        // Docker in Docker (cgroups-rs#131).
        let dind = format!("1:name=systemd:/docker/{ID2}/docker/{ID}\n");
        assert_eq!(workload_of(&dind), container_only(ID));
        // The same ID twice: CRI-O with cgroupfs once nested a container below its conmon
        // (cri-o/cri-o#4075).
        let twice = format!(
            "0::/kubepods/besteffort/pod{UID}/crio-conmon-{ID}/kubepods/besteffort/pod{UID}/crio-{ID}\n"
        );
        assert_eq!(workload_of(&twice), some(UID, ID));
        // A Docker daemon in a pod: its containers are in the pod.
        let in_pod = format!("0::/kubepods/burstable/pod{UID}/{ID2}/docker/{ID}\n");
        assert_eq!(workload_of(&in_pod), some(UID, ID));
        // kind in a pod: the inner kubelet's pod and container, which belong together.
        let other = "7165a37d-fa49-4f53-b8f1-5793f523e617";
        let kind_in_pod =
            format!("0::/kubepods/burstable/pod{other}/{ID2}/kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(workload_of(&kind_in_pod), some(UID, ID));
        // A pod cgroup below the container is not the container's pod.
        let below = format!("0::/kubepods/pod{other}/{ID2}/kubepods/pod{UID}\n");
        assert_eq!(workload_of(&below), some(other, ID2));
    }

    #[test]
    fn cgroup_namespaces_hide_the_pod() {
        // spiffe/spire#4004: the caller in tokend's own cgroup.
        assert_eq!(parse("0::/\n"), CgroupInfo::default());
        // spiffe/spire#2578: seen from inside another pod, kubepods is above the namespace.
        let sibling = format!("0::/../../pod{UID}/{ID}\n");
        let info = parse(&sibling);
        assert_eq!((info.pod_uid, info.container_id), container_only(ID));
        assert_eq!(info.unit, None);
        let qos = format!("0::/../../../burstable/pod{UID}/{ID}\n");
        assert_eq!(workload_of(&qos), container_only(ID));
        // spire's cgroups_pid_in_crio_pod fixture.
        let crio = format!("0::/../crio-{ID}.scope");
        assert_eq!(workload_of(&crio), container_only(ID));
        // A namespace that still shows kubepods.
        let visible = format!("0::/../../kubepods/besteffort/pod{UID}/{ID}\n");
        assert_eq!(workload_of(&visible), some(UID, ID));
        // Not a unit: the path's slices are out of sight.
        assert_eq!(
            parse("0::/../../../../../system.slice/containerd.service").unit,
            None
        );
    }

    #[test]
    fn a_pod_uid_outside_kubepods_is_not_a_pod() {
        for path in [
            format!("/system.slice/pod{UID}/{ID}"),
            format!("/burstable/pod{UID}/{ID}"),
            format!("/kubepods/guaranteed/pod{UID}/{ID}"),
            format!("/kubepods/burstable/x/pod{UID}/{ID}"),
            format!("/system.slice/system-pod{UID_SYSTEMD}.slice/docker-{ID}.scope"),
            format!("/kubepods.slice/kubepods-guaranteed-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"),
            format!("/kubepods.slice/xkubepods-pod{UID_SYSTEMD}.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(
                workload_of(&format!("0::{path}")),
                container_only(ID),
                "{path}"
            );
        }
    }

    #[test]
    fn nothing_below_a_user_manager_names_a_pod_or_container() {
        // A user's systemd may name its cgroups anything.
        let forged = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/app.slice/kubepods/besteffort/pod{UID}/{ID}\n"
        );
        let info = parse(&forged);
        assert_eq!((info.pod_uid, info.container_id), NOTHING);
        assert_eq!(info.unit.as_deref(), Some("user@1000.service"));
        assert_eq!(info.user_unit, None, "kubepods is no unit");
        // Rootless Podman.
        let rootless = format!(
            "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope/container\n"
        );
        let info = parse(&rootless);
        assert_eq!((info.pod_uid, info.container_id), NOTHING);
        assert_eq!(info.user_unit, Some(format!("libpod-{ID}.scope")));
        // A user manager inside a container is the container's business.
        let inside = format!(
            "0::/kubepods/pod{UID}/{ID}/user.slice/user-1000.slice/user@1000.service/init.scope\n"
        );
        assert_eq!(workload_of(&inside), some(UID, ID));
    }

    #[test]
    fn shapes_are_strict() {
        let short_uid = &UID[..35];
        let upper_uid = UID.to_uppercase();
        let upper_id = ID.to_uppercase();
        let (id63, id65) = (&ID[..63], format!("{ID}0"));
        let no_dashes = UID.replace('-', "");
        let mixed = format!("{}_{}", &UID[..8], &UID[9..]);
        for path in [
            format!("/kubepods/pod{short_uid}/{ID}"),
            format!("/kubepods/pod{short_uid}g/{ID}"),
            format!("/kubepods/pod{upper_uid}/{ID}"),
            format!("/kubepods/pod{no_dashes}/{ID}"),
            format!("/kubepods/pod{UID_SYSTEMD}/{ID}"),
            format!("/kubepods/pod{mixed}/{ID}"),
            format!("/kubepods/pod{UID}x/{ID}"),
            format!("/kubepods.slice/kubepods-pod{short_uid}.slice/crio-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{mixed}.slice/crio-{ID}.scope"),
            format!("/kubepods.slice/kubepods-pod{UID_SYSTEMD}x.slice/crio-{ID}.scope"),
        ] {
            assert_eq!(
                workload_of(&format!("0::{path}")),
                container_only(ID),
                "{path}"
            );
        }
        for path in [
            format!("/kubepods/pod{UID}/{upper_id}"),
            format!("/kubepods/pod{UID}/{id63}"),
            format!("/kubepods/pod{UID}/{id65}"),
            format!("/kubepods/pod{UID}/x{ID}"),
            format!("/kubepods/pod{UID}/docker-{ID}"),
            format!("/kubepods/pod{UID}/containerd-{ID}.scope"),
            format!("/kubepods/pod{UID}/crio-{ID}.slice"),
            format!("/kubepods/pod{UID}/{ID}.scope"),
        ] {
            assert_eq!(workload_of(&format!("0::{path}")), NOTHING, "{path}");
        }
    }

    #[test]
    fn hierarchies_that_disagree_give_nothing() {
        let other = "7165a37d-fa49-4f53-b8f1-5793f523e617";
        let two_pods =
            format!("2:memory:/kubepods/pod{UID}/{ID}\n1:name=systemd:/kubepods/pod{other}/{ID}\n");
        assert_eq!(workload_of(&two_pods), NOTHING);
        let two_containers =
            format!("2:memory:/kubepods/pod{UID}/{ID}\n1:name=systemd:/kubepods/pod{UID}/{ID2}\n");
        assert_eq!(workload_of(&two_containers), NOTHING);
        let two_dockers = format!("2:memory:/docker/{ID}\n1:name=systemd:/docker/{ID2}\n");
        assert_eq!(workload_of(&two_dockers), NOTHING);
        // The same pod under both drivers' spellings is one pod.
        let both = format!(
            "2:memory:/kubepods/pod{UID}/{ID}\n1:name=systemd:/kubepods.slice/kubepods-pod{UID_SYSTEMD}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(workload_of(&both), some(UID, ID));
    }

    #[test]
    fn units() {
        for (text, unit, user_unit) in [
            (
                "0::/system.slice/billing.service",
                Some("billing.service"),
                None,
            ),
            (
                "0::/system.slice/billing.service/sub",
                Some("billing.service"),
                None,
            ),
            (
                "0::/system.slice/app.service/worker.service",
                Some("app.service"),
                None,
            ),
            (
                "1:name=systemd:/system.slice/nginx.service",
                Some("nginx.service"),
                None,
            ),
            (
                "0::/system.slice/system-getty.slice/getty@tty1.service",
                Some("getty@tty1.service"),
                None,
            ),
            (
                "0::/system.slice/system-systemd\\x2dfsck.slice/systemd-fsck@dev-disk-by\\x2duuid-1234.service",
                Some("systemd-fsck@dev-disk-by\\x2duuid-1234.service"),
                None,
            ),
            (
                "0::/user.slice/user-1000.slice/session-3.scope",
                Some("session-3.scope"),
                None,
            ),
            ("0::/init.scope", Some("init.scope"), None),
            (
                "0::/system.slice/tokend.socket",
                Some("tokend.socket"),
                None,
            ),
            ("0::/system.slice/home.mount", Some("home.mount"), None),
            (
                "0::/system.slice/dev-sda2.swap",
                Some("dev-sda2.swap"),
                None,
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/app-foo.scope",
                Some("user@1000.service"),
                Some("app-foo.scope"),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service/sub",
                Some("user@1000.service"),
                Some("foo.service"),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service/init.scope",
                Some("user@1000.service"),
                Some("init.scope"),
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service",
                Some("user@1000.service"),
                None,
            ),
            ("0::/", None, None),
            ("0::/system.slice", None, None),
            ("0::/system.slice/multi-user.target", None, None),
            ("0::/system.slice/sys-devices-x.device", None, None),
            ("0::/system.slice/logrotate.timer", None, None),
            ("0::/system.slice/.service", None, None),
            ("0::/system.slice/bad name.service", None, None),
            ("0::/system.slice/stuff/billing.service", None, None),
            (
                "0::/machine.slice/machine-web.scope/system.slice/nginx.service",
                Some("machine-web.scope"),
                None,
            ),
        ] {
            let info = parse(text);
            assert_eq!(info.unit.as_deref(), unit, "{text}");
            assert_eq!(info.user_unit.as_deref(), user_unit, "{text}");
        }
        let too_long = format!("0::/system.slice/{}.service", "a".repeat(248));
        assert_eq!(parse(&too_long).unit, None);
        let longest = format!("0::/system.slice/{}.service", "a".repeat(247));
        assert_eq!(parse(&longest).unit.map(|u| u.len()), Some(255));
    }

    #[test]
    fn the_path_each_hierarchy_gives() {
        let v1 = "12:memory:/system.slice/a.service\n1:name=systemd:/system.slice/b.service\n";
        assert_eq!(
            parse(&format!("{v1}0::/system.slice/c.service"))
                .path
                .as_deref(),
            Some("/system.slice/c.service")
        );
        assert_eq!(
            parse(&format!("{v1}0::/")).path.as_deref(),
            Some("/system.slice/b.service")
        );
        assert_eq!(
            parse(
                "3:cpu:/\n12:memory:/system.slice/a.service\n2:pids:/system.slice/d.service\n0::/"
            )
            .path
            .as_deref(),
            Some("/system.slice/a.service")
        );
        assert_eq!(
            parse("4:cpu,name=systemd:/system.slice/e.service\n12:memory:/system.slice/a.service")
                .path
                .as_deref(),
            Some("/system.slice/e.service")
        );
        assert_eq!(parse("3:cpu:/\n1:name=systemd:/\n0::/").path, None);
    }

    #[test]
    fn malformed_input_is_skipped() {
        let good = format!("0::/kubepods/pod{UID}/{ID}");
        // Trailing whitespace, CRLF, blank lines.
        for text in [
            format!("{good} \t\n"),
            format!("{good}\r\n"),
            format!("\n\n{good}\n\n"),
            format!("garbage\n{good}"),
        ] {
            assert_eq!(workload_of(&text), some(UID, ID), "{text:?}");
        }
        for text in [
            String::new(),
            "\n".to_string(),
            "C:\\Windows\\System32".to_string(),
            "\u{feff}0::/system.slice/a.service".to_string(),
            format!(" 0::/kubepods/pod{UID}/{ID}"),
            format!("x::/kubepods/pod{UID}/{ID}"),
            format!(":/kubepods/pod{UID}/{ID}"),
            format!("0:/kubepods/pod{UID}/{ID}"),
            format!("0::kubepods/pod{UID}/{ID}"),
            format!("0:cpu:/kubepods/pod{UID}/{ID}"),
            format!("3::/kubepods/pod{UID}/{ID}"),
            "0::".to_string(),
            "\0\0\0".to_string(),
            "日本:語:/ü".to_string(),
        ] {
            assert_eq!(parse(&text), CgroupInfo::default(), "{text:?}");
        }
    }

    #[test]
    fn bounded() {
        let good = format!("0::/kubepods/pod{UID}/{ID}\n");
        let filler = "5:rdma:/\n".repeat(MAX_LINES - 1);
        assert_eq!(workload_of(&format!("{filler}{good}")), some(UID, ID));
        let too_many = "5:rdma:/\n".repeat(MAX_LINES);
        assert_eq!(workload_of(&format!("{too_many}{good}")), NOTHING);
        let tail = format!("/kubepods/pod{UID}/{ID}");
        let longest = format!("/{}{tail}", "a".repeat(MAX_PATH - tail.len() - 1));
        assert_eq!(longest.len(), MAX_PATH);
        assert_eq!(workload_of(&format!("0::{longest}")), some(UID, ID));
        assert_eq!(parse(&format!("0::/a{longest}")), CgroupInfo::default());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn hex(len: usize) -> impl Strategy<Value = String> {
            proptest::collection::vec(proptest::sample::select(b"0123456789abcdef".to_vec()), len)
                .prop_map(|b| String::from_utf8(b).unwrap_or_default())
        }

        fn uid() -> impl Strategy<Value = String> {
            (hex(8), hex(4), hex(4), hex(4), hex(12))
                .prop_map(|(a, b, c, d, e)| format!("{a}-{b}-{c}-{d}-{e}"))
        }

        /// A kubelet's pod and container cgroup path, with any of the prefixes kind and cgroup
        /// roots add.
        fn pod_path(
            qos: &str,
            systemd: bool,
            runtime: &str,
            prefix: &str,
            uid: &str,
            id: &str,
        ) -> String {
            if systemd {
                let slice_prefix = if prefix.is_empty() { "" } else { "kubelet-" };
                let root = if prefix.is_empty() {
                    ""
                } else {
                    "/kubelet.slice"
                };
                let pod = format!("{slice_prefix}kubepods{qos}-pod{}", uid.replace('-', "_"));
                let qos_slice = if qos.is_empty() {
                    String::new()
                } else {
                    format!("/{slice_prefix}kubepods{qos}.slice")
                };
                format!(
                    "{prefix}{root}/{slice_prefix}kubepods.slice{qos_slice}/{pod}.slice/{runtime}-{id}.scope"
                )
            } else {
                let qos = qos.replace('-', "/");
                let runtime = if runtime == "crio" { "crio-" } else { "" };
                format!("{prefix}/kubepods{qos}/pod{uid}/{runtime}{id}")
            }
        }

        proptest! {
            #[test]
            fn any_text_never_panics(text in ".{0,600}") {
                let _ = parse(&text);
            }

            #[test]
            fn any_cgroup_like_text_never_panics(
                text in "([0-9]{0,2}:[a-z=,_]{0,12}:(/[a-z0-9@_.:-]{0,70}){0,8}\r?\n){0,8}"
            ) {
                let _ = parse(&text);
            }

            #[test]
            fn every_kubelet_layout_gives_its_pod_and_container(
                qos in proptest::sample::select(vec!["", "-burstable", "-besteffort"]),
                systemd in any::<bool>(),
                runtime in proptest::sample::select(vec!["cri-containerd", "crio", "docker"]),
                prefix in proptest::sample::select(vec![
                    "".to_string(),
                    format!("/system.slice/docker-{ID2}.scope"),
                    format!("/docker/{ID2}"),
                ]),
                v1 in any::<bool>(),
                uid in uid(),
                id in hex(64),
                tail in proptest::sample::select(vec!["", "/container"]),
            ) {
                let path = format!("{}{tail}", pod_path(qos, systemd, runtime, &prefix, &uid, &id));
                let text = if v1 {
                    format!("12:memory:{path}\n5:rdma:/\n2:cpu,cpuacct:{path}\n1:name=systemd:{path}\n0::/\n")
                } else {
                    format!("0::{path}\n")
                };
                let info = parse(&text);
                prop_assert_eq!(info.pod_uid.as_deref(), Some(uid.as_str()), "{}", text);
                prop_assert_eq!(info.container_id.as_deref(), Some(id.as_str()), "{}", text);
                prop_assert_eq!(info.path.as_deref(), Some(path.as_str()));
            }
        }
    }
}
