//! This host's users and groups, as the settings name them: by name, or by number, which is
//! taken as the id itself. A file sink's owner and group and a client's allowed users and
//! groups are resolved here, so that both read a name the same way.

use nix::unistd::{Gid, Group, User};

/// The uid of `user`, a name or a number.
pub fn uid_of(user: &str) -> Result<u32, String> {
    if let Ok(uid) = user.parse::<u32>() {
        return Ok(uid);
    }
    match User::from_name(user) {
        Ok(Some(u)) => Ok(u.uid.as_raw()),
        Ok(None) => Err(format!("no user named {user:?} on this host")),
        Err(e) => Err(format!("cannot look up user {user:?}: {e}")),
    }
}

/// The gid of `group`, a name or a number.
pub fn gid_of(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    group_of(group).map(|g| g.gid.as_raw())
}

/// The group `group` names, with its members; a number that is no group of this host is a
/// group of that id with no listed members.
pub fn group_of(group: &str) -> Result<Group, String> {
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
