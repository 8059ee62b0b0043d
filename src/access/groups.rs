//! Groups named by access rules: their gids and supplementary members, resolved through NSS
//! and again in the background, off the request path.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::Duration;

use nix::unistd::User;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::warn;

use crate::host::accounts::group_of;

/// How long a group's resolved member list is trusted: a user removed from a group loses access
/// within this, without a reload.
pub const MEMBERS_MAX_AGE: Duration = Duration::from_secs(60);
/// Member lists are resolved again this often, so that they stay younger than
/// [`MEMBERS_MAX_AGE`] as long as NSS answers within the other half.
pub(super) const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// A group as NSS knows it: its gid and the uids of its listed members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedGroup {
    pub gid: u32,
    pub members: Vec<u32>,
}

/// Looks a group up by name or numeric gid; an error says why it cannot.
pub type Resolver = Arc<dyn Fn(&str) -> Result<ResolvedGroup, String> + Send + Sync>;

/// The supplementary members of one `allowed_groups` entry, shared by every client that names
/// it and replaced by the directory's refresher.
pub struct GroupMembers {
    spec: String,
    gid: u32,
    current: RwLock<Members>,
}

struct Members {
    uids: HashSet<u32>,
    /// When the lookup that produced `uids` started.
    resolved: Instant,
}

impl GroupMembers {
    pub(super) fn spec(&self) -> &str {
        &self.spec
    }

    /// The group's gid, as resolved when the config was loaded.
    pub(super) fn gid(&self) -> u32 {
        self.gid
    }

    /// Whether `uid` is a listed member, by a list young enough to trust.
    pub(super) fn has(&self, uid: u32) -> bool {
        let members = self.current.read().unwrap_or_else(|e| e.into_inner());
        // A list the refresher has not replaced in time is not trusted: fail closed.
        members.uids.contains(&uid) && members.resolved.elapsed() < MEMBERS_MAX_AGE
    }

    fn set(&self, uids: impl IntoIterator<Item = u32>, resolved: Instant) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Members {
            uids: uids.into_iter().collect(),
            resolved,
        };
    }
}

impl std::fmt::Debug for GroupMembers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("GroupMembers").field(&self.spec).finish()
    }
}

/// Every group some client's access names, resolved again every [`REFRESH_EVERY`] by one
/// background task, off the request path: lookups go through NSS, which may be slow (LDAP) or
/// fail. A failed lookup empties the group's list (its members are refused until a lookup
/// succeeds); a stuck one leaves lists to age past [`MEMBERS_MAX_AGE`], which refuses them too.
pub struct GroupDirectory {
    resolver: Resolver,
    groups: Mutex<HashMap<String, Weak<GroupMembers>>>,
    refresher: Mutex<Option<JoinHandle<()>>>,
}

impl GroupDirectory {
    pub fn new(resolver: Resolver) -> Arc<GroupDirectory> {
        Arc::new(GroupDirectory {
            resolver,
            groups: Mutex::new(HashMap::new()),
            refresher: Mutex::new(None),
        })
    }

    /// The process's directory, resolving through NSS.
    pub fn system() -> &'static Arc<GroupDirectory> {
        static SYSTEM: LazyLock<Arc<GroupDirectory>> =
            LazyLock::new(|| GroupDirectory::new(Arc::new(resolve_group)));
        &SYSTEM
    }

    /// Resolves `spec` now and returns its shared member list, kept fresh from then on.
    pub(super) fn member_list(self: &Arc<Self>, spec: &str) -> Result<Arc<GroupMembers>, String> {
        let resolved = (self.resolver)(spec)?;
        Ok(self.register(spec, resolved.gid, resolved.members))
    }

    /// The shared member list of `spec`, updated with `members` just looked up.
    fn register(self: &Arc<Self>, spec: &str, gid: u32, members: Vec<u32>) -> Arc<GroupMembers> {
        let now = Instant::now();
        let group = {
            let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
            groups.retain(|_, g| g.strong_count() > 0);
            match groups.get(spec).and_then(Weak::upgrade) {
                Some(group) => {
                    group.set(members, now);
                    group
                }
                None => {
                    let group = Arc::new(GroupMembers {
                        spec: spec.to_string(),
                        gid,
                        current: RwLock::new(Members {
                            uids: members.into_iter().collect(),
                            resolved: now,
                        }),
                    });
                    groups.insert(spec.to_string(), Arc::downgrade(&group));
                    group
                }
            }
        };
        self.ensure_refresher();
        group
    }

    /// Starts the refresher on the current runtime unless one runs (a config checked outside
    /// a runtime needs none; a runtime that ended took its refresher with it).
    fn ensure_refresher(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut refresher = self.refresher.lock().unwrap_or_else(|e| e.into_inner());
        if refresher.as_ref().is_none_or(JoinHandle::is_finished) {
            *refresher = Some(runtime.spawn(refresh(Arc::downgrade(self))));
        }
    }

    pub(super) fn live(&self) -> Vec<Arc<GroupMembers>> {
        let mut groups = self.groups.lock().unwrap_or_else(|e| e.into_inner());
        groups.retain(|_, g| g.strong_count() > 0);
        groups.values().filter_map(Weak::upgrade).collect()
    }
}

/// Resolves every live group again every [`REFRESH_EVERY`], until no client names a group or
/// the directory is gone.
async fn refresh(directory: Weak<GroupDirectory>) {
    loop {
        tokio::time::sleep(REFRESH_EVERY).await;
        let Some((resolver, groups)) = directory.upgrade().map(|d| (d.resolver.clone(), d.live()))
        else {
            return;
        };
        if groups.is_empty() {
            return;
        }
        let started = Instant::now();
        let specs: Vec<String> = groups.iter().map(|g| g.spec.clone()).collect();
        let results = tokio::task::spawn_blocking(move || {
            specs.iter().map(|s| resolver(s)).collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        for (i, group) in groups.iter().enumerate() {
            match results.get(i) {
                Some(Ok(resolved)) => group.set(resolved.members.iter().copied(), started),
                Some(Err(reason)) => {
                    warn!(group = %group.spec, "cannot resolve the group's members; refusing them until it can be: {reason}");
                    group.set([], started);
                }
                None => group.set([], started),
            }
        }
    }
}

/// The NSS lookup: the group, and its listed members that are users of this host.
fn resolve_group(spec: &str) -> Result<ResolvedGroup, String> {
    let group = group_of(spec)?;
    Ok(ResolvedGroup {
        gid: group.gid.as_raw(),
        members: group
            .mem
            .iter()
            .filter_map(|m| User::from_name(m).ok().flatten())
            .map(|u| u.uid.as_raw())
            .collect(),
    })
}
