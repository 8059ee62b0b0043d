//! Who may read which client's token. On the Unix socket the kernel tells who is calling (peer
//! credentials: uid, gid, pid); each client's `allowed_users` and `allowed_groups` decide. TCP
//! callers cannot be identified, so only clients that opt in (`allow_tcp`) are served there.

use std::collections::HashSet;

use nix::unistd::{Gid, Group, User};
use tonic::Request;
use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};

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

/// One client's access rules, with names resolved to ids when the config is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// No lists: whoever can open the socket.
    open: bool,
    uids: HashSet<u32>,
    gids: HashSet<u32>,
    allow_tcp: bool,
}

/// No lists: whoever can open the socket, and no TCP.
impl Default for Access {
    fn default() -> Self {
        Access {
            open: true,
            uids: HashSet::new(),
            gids: HashSet::new(),
            allow_tcp: false,
        }
    }
}

impl Access {
    /// Resolves user and group names (or numeric ids). Errors name the list and the entry.
    pub fn resolve(
        users: &[String],
        groups: &[String],
        allow_tcp: bool,
    ) -> Result<Access, (&'static str, String)> {
        let mut access = Access {
            open: users.is_empty() && groups.is_empty(),
            uids: HashSet::new(),
            gids: HashSet::new(),
            allow_tcp,
        };
        for user in users {
            access
                .uids
                .insert(uid_of(user).map_err(|r| ("allowed_users", r))?);
        }
        for group in groups {
            let group = group_of(group).map_err(|r| ("allowed_groups", r))?;
            access.gids.insert(group.gid.as_raw());
            // Members who have the group as a supplementary group: peer credentials carry only
            // the primary gid, so they are admitted by uid.
            for member in &group.mem {
                if let Ok(Some(user)) = User::from_name(member) {
                    access.uids.insert(user.uid.as_raw());
                }
            }
        }
        Ok(access)
    }

    pub fn allows(&self, caller: &Caller) -> bool {
        match caller {
            Caller::Local { uid, gid, .. } => {
                self.open || self.uids.contains(uid) || self.gids.contains(gid)
            }
            Caller::Tcp => self.allow_tcp,
            Caller::Unknown => self.open,
        }
    }
}

fn uid_of(user: &str) -> Result<u32, String> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    match User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!("no user named {user:?} on this host")),
        Err(e) => Err(format!("cannot look up user {user:?}: {e}")),
    }
}

fn group_of(group: &str) -> Result<Group, String> {
    let found = match group.parse::<u32>() {
        Ok(gid) => Group::from_gid(Gid::from_raw(gid)).map(|g| {
            g.or(Some(Group {
                name: gid.to_string(),
                passwd: Default::default(),
                gid: Gid::from_raw(gid),
                mem: Vec::new(),
            }))
        }),
        Err(_) => Group::from_name(group),
    };
    match found {
        Ok(Some(g)) => Ok(g),
        Ok(None) => Err(format!("no group named {group:?} on this host")),
        Err(e) => Err(format!("cannot look up group {group:?}: {e}")),
    }
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

    #[test]
    fn unknown_names_are_config_errors() {
        let err = Access::resolve(&["no-such-user-xyz".into()], &[], false).unwrap_err();
        assert_eq!(err.0, "allowed_users");
        assert!(err.1.contains("no user named"), "{}", err.1);
        let err = Access::resolve(&[], &["no-such-group-xyz".into()], false).unwrap_err();
        assert_eq!(err.0, "allowed_groups");
    }
}
