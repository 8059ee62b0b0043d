//! Who may read which client's token. On the Unix socket the kernel tells who is calling (peer
//! credentials: uid, gid, pid) and tokend reads the calling process once per connection (its
//! unit, executable, cgroup, pod: `attest`); each client's `allowed_users` and `allowed_groups`
//! and its `[[allow]]` entries decide. TCP callers cannot be identified, so only clients that
//! opt in (`allow_tcp`) are served there. Group membership is resolved again in the background
//! (at most a minute old), so a user removed from a group loses access without a reload.
//!
//! `groups` keeps the member lists, `rules` the allow entries.

mod groups;
mod rules;

use std::collections::HashSet;
use std::sync::Arc;

use crate::attest::kubelet::Kubelet;
use crate::attest::process::{Process, Unattested};
use crate::host::accounts::uid_of;

pub use rules::Selectors;

use groups::{GroupDirectory, GroupMembers};
use rules::{Rule, Verdict};

/// The process on the other end of a call.
#[derive(Debug, Clone)]
pub enum Caller {
    /// A local process on the Unix socket, as the kernel identified it, and what was read of
    /// it when the connection was accepted.
    Local {
        uid: u32,
        gid: u32,
        pid: Option<i32>,
        process: Result<Arc<Process>, Unattested>,
    },
    /// A connection on the loopback TCP listener: no identity.
    Tcp,
    /// No connection information (a call not made over a listener, as in tests).
    Unknown,
}

impl Caller {
    /// The caller's uid, gid and process, if it is local.
    fn local(&self) -> Option<(u32, u32, Option<&Process>)> {
        match self {
            Caller::Local {
                uid, gid, process, ..
            } => Some((*uid, *gid, process.as_deref().ok())),
            _ => None,
        }
    }
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Caller::Local {
                uid,
                gid,
                pid,
                process,
            } => {
                write!(f, "uid {uid} gid {gid}")?;
                if let Some(pid) = pid {
                    write!(f, " pid {pid}")?;
                }
                match process {
                    Ok(p) => {
                        if let Some(unit) = &p.cgroup.unit {
                            write!(f, " unit {unit}")?;
                        }
                        if let Some(exe) = &p.exe {
                            write!(f, " exe {}", exe.path.display())?;
                        }
                        match (p.pod.get(), &p.cgroup.pod_uid, &p.cgroup.container_id) {
                            (Some(pod), _, _) => write!(f, " pod {}/{}", pod.namespace, pod.name),
                            // Not (yet) found at the kubelet: what the cgroup path says.
                            (None, Some(uid), _) => write!(f, " pod uid {uid}"),
                            (None, None, Some(id)) => {
                                write!(f, " container {}", &id[..12.min(id.len())])
                            }
                            (None, None, None) => Ok(()),
                        }
                    }
                    Err(why) => write!(f, " (no attributes: {why})"),
                }
            }
            Caller::Tcp => f.write_str("a TCP caller"),
            Caller::Unknown => f.write_str("an unidentified caller"),
        }
    }
}

/// Why a caller was let in, for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Granted {
    /// The client has no rules: whoever can open the socket.
    Open,
    /// A TCP caller of a client with `allow_tcp`.
    Tcp,
    /// `allowed_users` or `allowed_groups`.
    Listed,
    /// The `[[allow]]` entry of this index.
    Entry(usize),
}

impl std::fmt::Display for Granted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Granted::Open => f.write_str("no rules"),
            Granted::Tcp => f.write_str("allow_tcp"),
            Granted::Listed => f.write_str("allowed_users/allowed_groups"),
            Granted::Entry(i) => write!(f, "allow[{i}]"),
        }
    }
}

/// A decision made with what is known without a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed(Granted),
    Denied,
    /// An entry could match once the caller's pod or executable digest is looked up:
    /// [`Access::admit`] does that.
    Lookup,
}

/// One client's access rules, with names resolved to ids when the config is loaded; the
/// supplementary members of its groups are resolved again in the background.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `None` with no lists and no entries: whoever can open the socket. Boxed because most
    /// clients have none and every client holds its rules (152 bytes each unboxed, 1.3 MiB
    /// at 10,000 clients).
    lists: Option<Box<Lists>>,
    allow_tcp: bool,
}

#[derive(Debug, Clone, Default)]
struct Lists {
    uids: HashSet<u32>,
    /// The groups' gids, matched against the caller's primary gid.
    gids: HashSet<u32>,
    /// Members who have a group as a supplementary group: peer credentials carry only the
    /// primary gid, so they are admitted by uid.
    groups: Vec<Arc<GroupMembers>>,
    rules: Vec<Rule>,
}

/// The same rules (membership is the directory's, not the config's).
impl PartialEq for Lists {
    fn eq(&self, other: &Self) -> bool {
        let specs = |l: &Lists| {
            l.groups
                .iter()
                .map(|g| g.spec().to_string())
                .collect::<Vec<_>>()
        };
        let entries = |l: &Lists| l.rules.iter().map(|r| r.spec().clone()).collect::<Vec<_>>();
        self.uids == other.uids
            && self.gids == other.gids
            && specs(self) == specs(other)
            && entries(self) == entries(other)
    }
}

impl PartialEq for Access {
    fn eq(&self, other: &Self) -> bool {
        self.lists == other.lists && self.allow_tcp == other.allow_tcp
    }
}

impl Eq for Access {}

/// What a client's table says about who may read its token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rules<'a> {
    pub allowed_users: &'a [String],
    pub allowed_groups: &'a [String],
    pub allow: &'a [Selectors],
    pub allow_tcp: bool,
}

impl Access {
    /// Resolves user and group names (or numeric ids) through NSS and checks every entry;
    /// pods are looked up at `kubelet` (without one, no pod selector ever matches). Errors name
    /// the key (`allowed_users`, `allow[1].unit`) and the reason.
    pub fn resolve(
        rules: Rules<'_>,
        kubelet: Option<&Arc<Kubelet>>,
    ) -> Result<Access, (String, String)> {
        Access::resolve_in(GroupDirectory::system(), rules, kubelet)
    }

    /// As [`Access::resolve`], with groups resolved (and kept fresh) by `directory`.
    pub fn resolve_in(
        directory: &Arc<GroupDirectory>,
        rules: Rules<'_>,
        kubelet: Option<&Arc<Kubelet>>,
    ) -> Result<Access, (String, String)> {
        let open = rules.allowed_users.is_empty()
            && rules.allowed_groups.is_empty()
            && rules.allow.is_empty();
        if open {
            return Ok(Access {
                lists: None,
                allow_tcp: rules.allow_tcp,
            });
        }
        let mut lists = Lists::default();
        for user in rules.allowed_users {
            lists
                .uids
                .insert(uid_of(user).map_err(|r| ("allowed_users".to_string(), r))?);
        }
        for group in rules.allowed_groups {
            let members = directory
                .member_list(group)
                .map_err(|r| ("allowed_groups".to_string(), r))?;
            lists.gids.insert(members.gid());
            lists.groups.push(members);
        }
        for (i, entry) in rules.allow.iter().enumerate() {
            let rule = Rule::resolve(entry, directory, kubelet).map_err(|(key, reason)| {
                let key = if key == "allow" {
                    format!("allow[{i}]")
                } else {
                    format!("allow[{i}].{key}")
                };
                (key, reason)
            })?;
            lists.rules.push(rule);
        }
        Ok(Access {
            lists: Some(Box::new(lists)),
            allow_tcp: rules.allow_tcp,
        })
    }

    /// Called on every token request: reads only what was resolved or looked up before (no
    /// NSS, no allocation, no /proc), and takes a read lock only for callers admitted by
    /// neither uid nor gid.
    pub fn decide(&self, caller: &Caller) -> Decision {
        let Some((uid, gid, process)) = caller.local() else {
            return match caller {
                Caller::Tcp if self.allow_tcp => Decision::Allowed(Granted::Tcp),
                Caller::Unknown if self.lists.is_none() => Decision::Allowed(Granted::Open),
                _ => Decision::Denied,
            };
        };
        let Some(lists) = &self.lists else {
            return Decision::Allowed(Granted::Open);
        };
        if lists.uids.contains(&uid)
            || lists.gids.contains(&gid)
            || lists.groups.iter().any(|g| g.has(uid))
        {
            return Decision::Allowed(Granted::Listed);
        }
        let mut decision = Decision::Denied;
        for (i, rule) in lists.rules.iter().enumerate() {
            match rule.check(uid, gid, process) {
                Verdict::Match => return Decision::Allowed(Granted::Entry(i)),
                Verdict::Lookup => decision = Decision::Lookup,
                Verdict::NoMatch => {}
            }
        }
        decision
    }

    /// Decides, looking up the caller's pod or executable digest first where an entry needs
    /// it (once per connection: what is found is remembered on the caller's process).
    pub async fn admit(&self, caller: &Caller) -> Option<Granted> {
        match self.decide(caller) {
            Decision::Allowed(granted) => return Some(granted),
            Decision::Denied => return None,
            Decision::Lookup => {}
        }
        let (uid, gid, Some(process)) = caller.local()? else {
            return None;
        };
        let lists = self.lists.as_ref()?;
        for rule in &lists.rules {
            if rule.check(uid, gid, Some(process)) == Verdict::Lookup {
                rule.look_up(process).await;
            }
        }
        match self.decide(caller) {
            Decision::Allowed(granted) => Some(granted),
            Decision::Denied | Decision::Lookup => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;
    use std::time::Duration;

    use groups::{MEMBERS_MAX_AGE, REFRESH_EVERY, ResolvedGroup};

    impl Access {
        fn allows(&self, caller: &Caller) -> bool {
            matches!(self.decide(caller), Decision::Allowed(_))
        }
    }

    fn resolve(users: &[String], groups: &[String], tcp: bool) -> Result<Access, (String, String)> {
        resolve_in(GroupDirectory::system(), users, groups, tcp)
    }

    fn resolve_in(
        directory: &Arc<GroupDirectory>,
        users: &[String],
        groups: &[String],
        allow_tcp: bool,
    ) -> Result<Access, (String, String)> {
        let rules = Rules {
            allowed_users: users,
            allowed_groups: groups,
            allow_tcp,
            ..Rules::default()
        };
        Access::resolve_in(directory, rules, None)
    }

    fn local(uid: u32, gid: u32) -> Caller {
        Caller::Local {
            uid,
            gid,
            pid: Some(1),
            process: Err(Unattested::Gone),
        }
    }

    #[test]
    fn no_lists_means_whoever_can_open_the_socket_but_not_tcp() {
        let a = resolve(&[], &[], false).unwrap();
        assert!(a.allows(&local(1234, 1234)));
        assert!(!a.allows(&Caller::Tcp));
        assert!(resolve(&[], &[], true).unwrap().allows(&Caller::Tcp));
    }

    #[test]
    fn users_and_groups_by_name_or_id() {
        let a = resolve(&["root".into(), "4242".into()], &[], false).unwrap();
        assert!(a.allows(&local(0, 99)));
        assert!(a.allows(&local(4242, 99)));
        assert!(!a.allows(&local(65534, 65534)));
        let g = resolve(&[], &["nogroup".into()], false).unwrap();
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
        let access = resolve_in(&directory, &[], &["ops".into()], false).unwrap();
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
        let access = resolve_in(&directory, &[], &["ops".into()], false).unwrap();
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
        let access = resolve_in(&directory, &[], &["ops".into()], false).unwrap();
        // No refresher any more: nothing replaces the list.
        drop(directory);
        let lost = seconds_until_refused(&access, local(1001, 1001), 120).await;
        assert_eq!(lost, Some(MEMBERS_MAX_AGE.as_secs()));
    }

    #[tokio::test(start_paused = true)]
    async fn clients_naming_one_group_share_one_list() {
        let (directory, table) = directory();
        let a = resolve_in(&directory, &[], &["ops".into()], false).unwrap();
        let b = resolve_in(&directory, &["42".into()], &["ops".into()], false).unwrap();
        let groups = |a: &Access| a.lists.as_ref().unwrap().groups[0].clone();
        assert!(Arc::ptr_eq(&groups(&a), &groups(&b)));
        assert_eq!(directory.live().len(), 1);
        assert_ne!(a, b);
        assert_eq!(
            a,
            resolve_in(&directory, &[], &["ops".into()], false).unwrap()
        );
        table.lock().unwrap().remove("ops");
        let err = resolve_in(&directory, &[], &["ops".into()], false).unwrap_err();
        assert_eq!(err.0, "allowed_groups");
        drop((a, b));
        assert!(directory.live().is_empty(), "lists go with the last client");
    }

    #[test]
    fn unknown_names_are_config_errors() {
        let err = resolve(&["no-such-user-xyz".into()], &[], false).unwrap_err();
        assert_eq!(err.0, "allowed_users");
        assert!(err.1.contains("no user named"), "{}", err.1);
        let err = resolve(&[], &["no-such-group-xyz".into()], false).unwrap_err();
        assert_eq!(err.0, "allowed_groups");
    }
}
