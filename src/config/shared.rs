//! One copy of each value many clients have alike: thousands of clients of one provider name
//! the same token endpoint, issuer, scope and secret file, and every client's settings are held
//! while the daemon runs.

use std::collections::HashSet;
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The strings and paths of the clients made so far, each once.
#[derive(Default)]
pub(super) struct Shared {
    strings: Values<str>,
    paths: Values<Path>,
}

impl Shared {
    /// `value`, or the equal string an earlier client has.
    pub(super) fn string(&mut self, value: String) -> Arc<str> {
        self.strings.get(value)
    }

    /// `value`, or the equal path an earlier client has.
    pub(super) fn path(&mut self, value: PathBuf) -> Arc<Path> {
        self.paths.get(value)
    }
}

struct Values<T: ?Sized>(HashSet<Arc<T>>);

// Not derived: that would ask for `T: Default`, which `str` and `Path` are not.
impl<T: ?Sized> Default for Values<T> {
    fn default() -> Self {
        Values(HashSet::new())
    }
}

impl<T: ?Sized + Eq + Hash> Values<T> {
    fn get(&mut self, value: impl AsRef<T> + Into<Arc<T>>) -> Arc<T> {
        if let Some(shared) = self.0.get(value.as_ref()) {
            return shared.clone();
        }
        let shared = value.into();
        self.0.insert(shared.clone());
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_are_one_copy() {
        let mut shared = Shared::default();
        let a = shared.string("https://idp/token".to_string());
        let b = shared.string("https://idp/token".to_string());
        let c = shared.string("https://other/token".to_string());
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*c, *"https://other/token");
        let p = shared.path(PathBuf::from("/etc/tokend/secret"));
        let q = shared.path(PathBuf::from("/etc/tokend/secret"));
        assert!(Arc::ptr_eq(&p, &q) && !Arc::ptr_eq(&a, &c));
    }
}
