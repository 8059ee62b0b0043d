//! Who may read which client's token. On the Unix socket the kernel tells who is calling (peer
//! credentials: uid, gid, pid); each client's `allowed_users` and `allowed_groups` decide. TCP
//! callers cannot be identified, so only clients that opt in (`allow_tcp`) are served there.
//! Group membership is resolved again in the background (at most a minute old), so a user
//! removed from a group loses access without a reload.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, RwLock, Weak};
use std::time::Duration;

use nix::unistd::User;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Request;
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tracing::warn;

use crate::host::accounts::{group_of, uid_of};

/// The process on the other end of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A local process on the Unix socket, as the kernel identified it.
    Local {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
    },
    /// A connection on the loopback TCP listener: no identity.
    Tcp,
    /// No connection information (a call not made over a listener, as in tests).
    Unknown,
}

impl Caller {
    pub fn of<T>(request: &Request<T>) -> Caller {
        if let Some(info) = request.extensions().get::<UdsConnectInfo>() {
            return match &info.peer_cred {
                Some(cred) => Caller::Local {
                    uid: cred.uid(),
                    gid: cred.gid(),
                    pid: cred.pid(),
                },
                None => Caller::Unknown,
            };
        }
        if request.extensions().get::<TcpConnectInfo>().is_some() {
            return Caller::Tcp;
        }
        Caller::Unknown
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Local { uid, gid, pid } => {
                write!(f, "uid {uid} gid {gid}")?;
                match pid {
                    Some(pid) => write!(f, " pid {pid}"),
                    None => Ok(()),
                }
            }
            Caller::Tcp => f.write_str("a TCP caller"),
            Caller::Unknown => f.write_str("an unidentified caller"),
        }
    }
}

/// How long a group's resolved member list is trusted: a user removed from a group loses access
/// within this, without a reload.
pub const MEMBERS_MAX_AGE: Duration = Duration::from_secs(60);
/// Member lists are resolved again this often, so that they stay younger than
/// [`MEMBERS_MAX_AGE`] as long as NSS answers within the other half.
const REFRESH_EVERY: Duration = Duration::from_secs(30);

/// One client's access rules, with names resolved to ids when the config is loaded; the
/// supplementary members of its groups are resolved again in the background.
#[derive(Debug, Clone)]
pub struct Access {
    /// No lists: whoever can open the socket.
    open: bool,
    uids: HashSet<u32>,
    /// The groups' gids, matched against the caller's primary gid.
    gids: HashSet<u32>,
    /// Members who have a group as a supplementary group: peer credentials carry only the
    /// primary gid, so they are admitted by uid.
    groups: Vec<Arc<GroupMembers>>,
    allow_tcp: bool,
}

/// No lists: whoever can open the socket, and no TCP.
impl Default for Access {
    fn default() -> Self {
        Access {
            open: true,
            uids: HashSet::new(),
            gids: HashSet::new(),
            groups: Vec::new(),
            allow_tcp: false,
        }
    }
}

/// The same rules (membership is the directory's, not the config's).
impl PartialEq for Access {
    fn eq(&self, other: &Self) -> bool {
        let specs = |a: &Access| a.groups.iter().map(|g| g.spec.clone()).collect::<Vec<_>>();
        self.open == other.open
            && self.uids == other.uids
            && self.gids == other.gids
            && self.allow_tcp == other.allow_tcp
            && specs(self) == specs(other)
    }
}

impl Eq for Access {}

impl Access {
    /// Resolves user and group names (or numeric ids) through NSS. Errors name the list and
    /// the entry.
    pub fn resolve(
        users: &[String],
        groups: &[String],
        allow_tcp: bool,
    ) -> Result<Access, (&'static str, String)> {
        Access::resolve_in(GroupDirectory::system(), users, groups, allow_tcp)
    }

    /// As [`Access::resolve`], with groups resolved (and kept fresh) by `directory`.
    pub fn resolve_in(
        directory: &Arc<GroupDirectory>,
        users: &[String],
        groups: &[String],
        allow_tcp: bool,
    ) -> Result<Access, (&'static str, String)> {
        let mut access = Access {
            open: users.is_empty() && groups.is_empty(),
            allow_tcp,
            ..Access::default()
        };
        for user in users {
            access
                .uids
                .insert(uid_of(user).map_err(|r| ("allowed_users", r))?);
        }
        for group in groups {
            let resolved = (directory.resolver)(group).map_err(|r| ("allowed_groups", r))?;
            access.gids.insert(resolved.gid);
            access
                .groups
                .push(directory.register(group, resolved.members));
        }
        Ok(access)
    }

    /// Called on every token request: reads only what was resolved before (no NSS, no
    /// allocation), and takes a read lock only for callers admitted by neither uid nor gid.
    pub fn allows(&self, caller: &Caller) -> bool {
        match caller {
            Caller::Local { uid, gid, .. } => {
                self.open
                    || self.uids.contains(uid)
                    || self.gids.contains(gid)
                    || self.groups.iter().any(|g| g.has(*uid))
            }
            Caller::Tcp => self.allow_tcp,
            Caller::Unknown => self.open,
        }
    }
}

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
    current: RwLock<Members>,
}

struct Members {
    uids: HashSet<u32>,
    /// When the lookup that produced `uids` started.
    resolved: Instant,
}

impl GroupMembers {
    fn has(&self, uid: u32) -> bool {
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

    /// The shared member list of `spec`, updated with `members` just looked up.
    fn register(self: &Arc<Self>, spec: &str, members: Vec<u32>) -> Arc<GroupMembers> {
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

    fn live(&self) -> Vec<Arc<GroupMembers>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn local(uid: u32, gid: u32) -> Caller {
        Caller::Local {
            uid,
            gid,
            pid: Some(1),
        }
    }

    #[test]
    fn no_lists_means_whoever_can_open_the_socket_but_not_tcp() {
        let a = Access::resolve(&[], &[], false).unwrap();
        assert!(a.allows(&local(1234, 1234)));
        assert!(!a.allows(&Caller::Tcp));
        assert!(
            Access::resolve(&[], &[], true)
                .unwrap()
                .allows(&Caller::Tcp)
        );
    }

    #[test]
    fn users_and_groups_by_name_or_id() {
        let a = Access::resolve(&["root".into(), "4242".into()], &[], false).unwrap();
        assert!(a.allows(&local(0, 99)));
        assert!(a.allows(&local(4242, 99)));
        assert!(!a.allows(&local(65534, 65534)));
        let g = Access::resolve(&[], &["nogroup".into()], false).unwrap();
        assert!(g.allows(&local(7, 65534)), "primary group matches");
        assert!(!g.allows(&local(7, 7)));
        assert!(
            !g.allows(&Caller::Unknown),
            "lists exclude unidentified callers"
        );
    }

    /// Group name to its members, or a lookup error.
    type Table = Arc<Mutex<HashMap<String, Result<Vec<u32>, String>>>>;

    /// A directory over a table the test edits.
    fn directory() -> (Arc<GroupDirectory>, Table) {
        let table = Arc::new(Mutex::new(HashMap::from([(
            "ops".to_string(),
            Ok::<_, String>(vec![1001, 1002]),
        )])));
        let lookup = table.clone();
        let directory = GroupDirectory::new(Arc::new(move |spec: &str| {
            match lookup.lock().unwrap().get(spec) {
                Some(Ok(members)) => Ok(ResolvedGroup {
                    gid: 4000,
                    members: members.clone(),
                }),
                Some(Err(e)) => Err(e.clone()),
                None => Err(format!("no group named {spec:?} on this host")),
            }
        }));
        (directory, table)
    }

    /// Seconds (of the paused clock, in steps of one) until `caller` is refused, up to `limit`.
    async fn seconds_until_refused(access: &Access, caller: Caller, limit: u64) -> Option<u64> {
        for second in 1..=limit {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !access.allows(&caller) {
                return Some(second);
            }
        }
        None
    }

    #[tokio::test(start_paused = true)]
    async fn a_user_removed_from_a_group_loses_access_within_a_minute() {
        let (directory, table) = directory();
        let access = Access::resolve_in(&directory, &[], &["ops".into()], false).unwrap();
        assert!(access.allows(&local(1001, 1001)), "supplementary member");
        assert!(access.allows(&local(7, 4000)), "primary group");
        assert!(!access.allows(&local(1003, 1003)));
        // Removed just after a refresh has landed: the worst moment.
        tokio::time::sleep(REFRESH_EVERY + Duration::from_millis(1)).await;
        table
            .lock()
            .unwrap()
            .insert("ops".into(), Ok(vec![1002, 1003]));
        let lost = seconds_until_refused(&access, local(1001, 1001), 120).await;
        assert!(lost.is_some_and(|s| s <= 60), "refused after {lost:?} s");
        assert!(
            access.allows(&local(1003, 1003)),
            "a member added is let in"
        );
        assert!(access.allows(&local(1002, 1002)), "the others stay");
        // Never let in again later.
        assert_eq!(
            seconds_until_refused(&access, local(1002, 1002), 200).await,
            None
        );
        assert!(!access.allows(&local(1001, 1001)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_lookup_fails_closed_until_one_succeeds() {
        let (directory, table) = directory();
        let access = Access::resolve_in(&directory, &[], &["ops".into()], false).unwrap();
        table
            .lock()
            .unwrap()
            .insert("ops".into(), Err("LDAP server unreachable".into()));
        let lost = seconds_until_refused(&access, local(1001, 1001), 120).await;
        assert!(lost.is_some_and(|s| s <= 60), "refused after {lost:?} s");
        assert!(
            access.allows(&local(7, 4000)),
            "the primary gid is the caller's own"
        );
        table.lock().unwrap().insert("ops".into(), Ok(vec![1001]));
        tokio::time::sleep(REFRESH_EVERY + Duration::from_secs(1)).await;
        assert!(access.allows(&local(1001, 1001)), "back once NSS answers");
    }

    #[tokio::test(start_paused = true)]
    async fn lists_not_refreshed_in_time_are_not_trusted() {
        let (directory, _) = directory();
        let access = Access::resolve_in(&directory, &[], &["ops".into()], false).unwrap();
        // No refresher any more: nothing replaces the list.
        drop(directory);
        let lost = seconds_until_refused(&access, local(1001, 1001), 120).await;
        assert_eq!(lost, Some(MEMBERS_MAX_AGE.as_secs()));
    }

    #[tokio::test(start_paused = true)]
    async fn clients_naming_one_group_share_one_list() {
        let (directory, table) = directory();
        let a = Access::resolve_in(&directory, &[], &["ops".into()], false).unwrap();
        let b = Access::resolve_in(&directory, &["42".into()], &["ops".into()], false).unwrap();
        assert!(Arc::ptr_eq(&a.groups[0], &b.groups[0]));
        assert_eq!(directory.live().len(), 1);
        assert_ne!(a, b);
        assert_eq!(
            a,
            Access::resolve_in(&directory, &[], &["ops".into()], false).unwrap()
        );
        table.lock().unwrap().remove("ops");
        let err = Access::resolve_in(&directory, &[], &["ops".into()], false).unwrap_err();
        assert_eq!(err.0, "allowed_groups");
        drop((a, b));
        assert!(directory.live().is_empty(), "lists go with the last client");
    }

    #[test]
    fn unknown_names_are_config_errors() {
        let err = Access::resolve(&["no-such-user-xyz".into()], &[], false).unwrap_err();
        assert_eq!(err.0, "allowed_users");
        assert!(err.1.contains("no user named"), "{}", err.1);
        let err = Access::resolve(&[], &["no-such-group-xyz".into()], false).unwrap_err();
        assert_eq!(err.0, "allowed_groups");
    }
}
