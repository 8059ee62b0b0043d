//! The kubelet's pod list, read for what selectors need of each pod and indexed by container ID
//! and pod UID. Everything else in the list (specs, environment, volumes, conditions) is
//! skipped by the parser without being kept.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

/// The annotation on a mirror pod (the API server's copy of a static pod) naming the static
/// pod's UID, which is the UID in the containers' cgroup paths.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A pod on this node, as much of it as access rules look at.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Pod {
    /// `metadata.uid`.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    /// `spec.serviceAccountName`; empty for a pod without one (a static pod).
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// The bare IDs (64 hex digits, without `containerd://` and the like) of every container,
    /// init container and ephemeral container the kubelet reports as created.
    pub container_ids: Vec<String>,
    /// For a static pod's mirror, the `kubernetes.io/config.mirror` annotation: the static
    /// pod's own UID, which its cgroups carry instead of `uid`.
    pub mirror_uid: Option<String>,
}

impl fmt::Debug for Pod {
    // Short enough for a log line: labels and containers are counted, not listed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Pod");
        d.field("pod", &format_args!("{}/{}", self.namespace, self.name))
            .field("uid", &self.uid)
            .field("service_account", &self.service_account)
            .field("labels", &self.labels.len())
            .field("containers", &self.container_ids.len());
        if let Some(mirror) = &self.mirror_uid {
            d.field("mirror_uid", mirror);
        }
        d.finish()
    }
}

/// One pod list, indexed.
#[derive(Debug, Default)]
pub(super) struct Pods {
    by_container: HashMap<String, Arc<Pod>>,
    by_uid: HashMap<String, Arc<Pod>>,
    count: usize,
}

impl Pods {
    /// The pod of `container_id` if the list has that container, else the pod of `pod_uid`
    /// (its `uid` or, for a static pod, its `mirror_uid`). A container found in a pod other
    /// than the one `pod_uid` names is no answer: one of the two is not what it claims.
    pub(super) fn find(
        &self,
        pod_uid: Option<&str>,
        container_id: Option<&str>,
    ) -> Option<Arc<Pod>> {
        if let Some(pod) = container_id.and_then(|id| self.by_container.get(id)) {
            let agrees =
                pod_uid.is_none_or(|uid| pod.uid == uid || pod.mirror_uid.as_deref() == Some(uid));
            return agrees.then(|| pod.clone());
        }
        pod_uid.and_then(|uid| self.by_uid.get(uid)).cloned()
    }

    /// How many pods the list held.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    fn index(pods: Vec<Pod>) -> Pods {
        let mut out = Pods {
            count: pods.len(),
            ..Pods::default()
        };
        let pods: Vec<Arc<Pod>> = pods.into_iter().map(Arc::new).collect();
        for pod in &pods {
            for id in &pod.container_ids {
                out.by_container.insert(id.clone(), pod.clone());
            }
            if !pod.uid.is_empty() {
                out.by_uid.insert(pod.uid.clone(), pod.clone());
            }
        }
        // After every `uid`: a mirror annotation cannot take the place of another pod's UID.
        for pod in &pods {
            if let Some(mirror) = pod.mirror_uid.as_ref().filter(|m| !m.is_empty()) {
                out.by_uid
                    .entry(mirror.clone())
                    .or_insert_with(|| pod.clone());
            }
        }
        out
    }
}

/// Why a body is not a pod list. Says where, never what: the text is the kubelet's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("is not JSON (at line {line}, column {column})")]
    Syntax { line: usize, column: usize },
    #[error(
        "is not a PodList (a field missing or of the wrong type at line {line}, column {column})"
    )]
    Shape { line: usize, column: usize },
    #[error("is a {0:?}, not a PodList")]
    Kind(String),
}

/// Reads the kubelet's `/pods` answer, a `v1.PodList`.
pub(super) fn parse(body: &[u8]) -> Result<Pods, ParseError> {
    let list: List = serde_json::from_slice(body).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        match e.classify() {
            serde_json::error::Category::Data => ParseError::Shape { line, column },
            _ => ParseError::Syntax { line, column },
        }
    })?;
    if let Some(kind) = list.kind.filter(|k| k != "PodList") {
        // A kind is a short identifier; a long one is cut so the message stays a message.
        return Err(ParseError::Kind(kind.chars().take(40).collect()));
    }
    Ok(Pods::index(
        list.items.into_iter().map(Item::into_pod).collect(),
    ))
}

/// A container status's `containerID` (`containerd://<id>`, `cri-o://<id>`, `docker://<id>`)
/// as its bare ID, if it is the 64 lowercase hex digits every such runtime uses.
fn bare_id(container_id: &str) -> Option<&str> {
    let (_runtime, id) = container_id.split_once("://")?;
    (id.len() == 64 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(id)
}

#[derive(Deserialize)]
struct List {
    #[serde(default)]
    kind: Option<String>,
    /// Required, but may be `null`: Go encodes an empty list so.
    #[serde(deserialize_with = "nullable")]
    items: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    #[serde(default, deserialize_with = "nullable")]
    metadata: Metadata,
    #[serde(default, deserialize_with = "nullable")]
    spec: Spec,
    #[serde(default, deserialize_with = "nullable")]
    status: Status,
}

#[derive(Deserialize, Default)]
struct Metadata {
    #[serde(default, deserialize_with = "nullable")]
    uid: String,
    #[serde(default, deserialize_with = "nullable")]
    name: String,
    #[serde(default, deserialize_with = "nullable")]
    namespace: String,
    #[serde(default, deserialize_with = "nullable")]
    labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "nullable")]
    annotations: Mirror,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Spec {
    #[serde(default, deserialize_with = "nullable")]
    service_account_name: String,
    /// The deprecated alias, set by older clients only.
    #[serde(default, deserialize_with = "nullable")]
    service_account: String,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[serde(default, deserialize_with = "nullable")]
    container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "nullable")]
    init_container_statuses: Vec<ContainerStatus>,
    #[serde(default, deserialize_with = "nullable")]
    ephemeral_container_statuses: Vec<ContainerStatus>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    /// Empty or absent until the runtime has created the container.
    #[serde(default, rename = "containerID", deserialize_with = "nullable")]
    container_id: String,
}

impl Item {
    fn into_pod(self) -> Pod {
        let Item {
            metadata,
            spec,
            status,
        } = self;
        let container_ids = [
            status.container_statuses,
            status.init_container_statuses,
            status.ephemeral_container_statuses,
        ]
        .into_iter()
        .flatten()
        .filter_map(|c| bare_id(&c.container_id).map(str::to_string))
        .collect();
        let service_account = if spec.service_account_name.is_empty() {
            spec.service_account
        } else {
            spec.service_account_name
        };
        Pod {
            uid: metadata.uid,
            namespace: metadata.namespace,
            name: metadata.name,
            service_account,
            labels: metadata.labels,
            container_ids,
            mirror_uid: metadata.annotations.0,
        }
    }
}

/// A field that may be `null`, read as its default.
fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Of a pod's annotations, only the mirror annotation's value; the others (among them
/// `kubectl.kubernetes.io/last-applied-configuration`, a whole manifest) are skipped unread.
#[derive(Default)]
struct Mirror(Option<String>);

impl<'de> Deserialize<'de> for Mirror {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Annotations;
        impl<'de> Visitor<'de> for Annotations {
            type Value = Mirror;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of annotations")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Mirror, A::Error> {
                let mut mirror = None;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == MIRROR_ANNOTATION {
                        mirror = Some(map.next_value::<String>()?);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(Mirror(mirror))
            }
        }
        d.deserialize_map(Annotations)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kubelet's `/pods` answer, trimmed but with the fields a real one has around the ones
    /// read: a Deployment's pod on containerd with an init container, a CRI-O pod with one
    /// container still being created, a static pod's mirror, and a pod with nulls.
    const NODE: &str = include_str!("fixtures/pods.json");

    fn pods() -> Pods {
        parse(NODE.as_bytes()).unwrap()
    }

    const WEB_APP: &str = "3b1e9a1c55d0d41c3f6a1d6dc4c9e8a1f0b2c3d4e5f60718293a4b5c6d7e8f90";
    const WEB_INIT: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a39281706f5e4d3c2b1a0";
    const WEB_UID: &str = "6d4a1f8e-2b3c-4d5e-9f01-23456789abcd";

    #[test]
    fn a_deployment_pod_with_its_labels_and_every_container() {
        let pods = pods();
        assert_eq!(pods.len(), 4);
        let web = pods.find(None, Some(WEB_APP)).unwrap();
        assert_eq!(web.uid, WEB_UID);
        assert_eq!(web.namespace, "shop");
        assert_eq!(web.name, "web-7c9d8f6b5-x2x4q");
        assert_eq!(web.service_account, "web");
        assert_eq!(web.labels.get("app.kubernetes.io/name").unwrap(), "web");
        assert_eq!(web.labels.get("pod-template-hash").unwrap(), "7c9d8f6b5");
        assert_eq!(web.labels.len(), 3);
        assert_eq!(web.mirror_uid, None);
        // The init container and the sidecar too, without their runtime's prefix.
        assert_eq!(web.container_ids.len(), 3);
        assert!(web.container_ids.iter().any(|c| c == WEB_INIT));
        assert!(Arc::ptr_eq(&web, &pods.find(None, Some(WEB_INIT)).unwrap()));
        assert!(Arc::ptr_eq(&web, &pods.find(Some(WEB_UID), None).unwrap()));
        assert!(Arc::ptr_eq(
            &web,
            &pods.find(Some(WEB_UID), Some(WEB_APP)).unwrap()
        ));
        let shown = format!("{web:?}");
        assert!(shown.contains("shop/web-7c9d8f6b5-x2x4q"), "{shown}");
        assert!(shown.len() < 200, "{shown}");
    }

    #[test]
    fn a_cri_o_pod_and_a_container_not_yet_created() {
        let pods = pods();
        let id = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
        let cache = pods.find(None, Some(id)).unwrap();
        assert_eq!(cache.namespace, "data");
        assert_eq!(cache.name, "redis-0");
        // Only the deprecated field names its account.
        assert_eq!(cache.service_account, "redis");
        assert_eq!(cache.container_ids, vec![id.to_string()]);
    }

    #[test]
    fn a_static_pod_is_found_by_the_uid_its_cgroups_carry() {
        let pods = pods();
        let static_uid = "e2f0c4a8b1d39f6e7a5c0b2d4f6a8c0e";
        let api = pods.find(Some(static_uid), None).unwrap();
        assert_eq!(api.name, "kube-apiserver-node-1");
        assert_eq!(api.namespace, "kube-system");
        assert_eq!(api.service_account, "");
        assert_eq!(api.mirror_uid.as_deref(), Some(static_uid));
        assert!(Arc::ptr_eq(&api, &pods.find(Some(&api.uid), None).unwrap()));
        // Its docker container, named with the static UID, is the same pod.
        let id = api.container_ids[0].clone();
        assert!(Arc::ptr_eq(
            &api,
            &pods.find(Some(static_uid), Some(&id)).unwrap()
        ));
    }

    #[test]
    fn nulls_and_missing_fields_are_empty() {
        let pods = pods();
        let bare = pods
            .find(Some("0c6b8d2e-0000-4000-8000-000000000004"), None)
            .unwrap();
        assert_eq!(bare.name, "");
        assert!(bare.labels.is_empty());
        assert!(bare.container_ids.is_empty());
        let empty =
            parse(br#"{"kind":"PodList","apiVersion":"v1","metadata":{},"items":null}"#).unwrap();
        assert_eq!(empty.len(), 0);
        let minimal = parse(br#"{"items":[{}]}"#).unwrap();
        assert_eq!(minimal.len(), 1);
        assert!(minimal.find(Some(""), None).is_none());
    }

    #[test]
    fn a_container_in_another_pod_than_claimed_is_no_answer() {
        let pods = pods();
        let other_uid = "0c6b8d2e-0000-4000-8000-000000000004";
        assert!(pods.find(Some(other_uid), Some(WEB_APP)).is_none());
        // An unknown container falls back to the pod UID.
        assert!(pods.find(Some(WEB_UID), Some(&"f".repeat(64))).is_some());
        assert!(pods.find(None, None).is_none());
    }

    #[test]
    fn container_ids_are_bare_hex_of_known_shape() {
        let hex = "a".repeat(64);
        assert_eq!(bare_id(&format!("containerd://{hex}")), Some(hex.as_str()));
        assert_eq!(bare_id(&format!("cri-o://{hex}")), Some(hex.as_str()));
        assert_eq!(bare_id(&hex), None);
        assert_eq!(bare_id(&format!("containerd://{}", "A".repeat(64))), None);
        assert_eq!(bare_id("containerd://abc"), None);
        assert_eq!(bare_id(""), None);
    }

    #[test]
    fn garbage_is_refused_without_quoting_it() {
        for (body, want) in [
            (&b"<html>502 Bad Gateway</html>"[..], "is not JSON"),
            (b"", "is not JSON"),
            (br#"{"kind":"PodList","items":[{"metadata":"#, "is not JSON"),
            (br#"{"kind":"PodList"}"#, "is not a PodList"),
            (br#"{"items":{"a":1}}"#, "is not a PodList"),
            (br#"[1,2,3]"#, "is not a PodList"),
            (
                br#"{"items":[{"metadata":{"labels":{"secret-ish":7}}}]}"#,
                "is not a PodList",
            ),
            (br#"{"kind":"Status","items":[]}"#, "is a \"Status\""),
        ] {
            let err = parse(body).err().unwrap().to_string();
            assert!(
                err.starts_with(want),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
            assert!(
                !err.contains("secret-ish") && !err.contains("Bad Gateway"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_huge_list_is_read_in_one_pass() {
        // 2,200 pods with a large ignored spec each: the parser skips, never keeps, the rest.
        let filler = "x".repeat(4000);
        let items: Vec<String> = (0..2200)
            .map(|i| {
                format!(
                    r#"{{"metadata":{{"uid":"u{i}","name":"p{i}","namespace":"n","annotations":{{"big":"{filler}"}}}},"spec":{{"containers":[{{"env":[{{"name":"X","value":"{filler}"}}]}}]}},"status":{{"containerStatuses":[{{"containerID":"containerd://{i:064x}"}}]}}}}"#
                )
            })
            .collect();
        let body = format!(r#"{{"kind":"PodList","items":[{}]}}"#, items.join(","));
        assert!(body.len() > 16 * 1024 * 1024);
        let pods = parse(body.as_bytes()).unwrap();
        assert_eq!(pods.len(), 2200);
        assert_eq!(
            pods.find(None, Some(&format!("{:064x}", 2199)))
                .unwrap()
                .name,
            "p2199"
        );
    }
}
