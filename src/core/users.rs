//! Bester users: the logged-in names the core holds for Bester connections, so that
//! `sendClients` reaches every connection of a user through the registry like any other
//! delivery. A connection is labelled at most once (a user, or a peer server); a user may
//! hold several connections.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::interest::{Interest, Name};

/// Who a labelled connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// A logged-in user.
    User(String),
    /// A configured peer server.
    Peer(String),
}

#[derive(Default)]
struct Inner {
    labels: HashMap<u64, Label>,
    /// Username → ids of its connections.
    by_user: HashMap<String, BTreeSet<u64>>,
}

/// Labels of live connections, by connection id.
#[derive(Default)]
pub struct Users {
    inner: Mutex<Inner>,
    /// Told when a user gets its first connection or loses its last.
    interest: Interest,
}

impl Users {
    pub fn new(interest: Interest) -> Users {
        Users {
            inner: Mutex::default(),
            interest,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while holding this lock; recover the guard rather than the hub.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Labels connection `id` (`None`: anonymous again, e.g. after `logout`).
    pub fn set(&self, id: u64, label: Option<Label>) {
        let mut changed = Vec::new();
        {
            let mut inner = self.lock();
            if let Some(Label::User(old)) = inner.labels.remove(&id)
                && unindex(&mut inner, &old, id)
            {
                changed.push(old);
            }
            if let Some(label) = label {
                if let Label::User(u) = &label {
                    let ids = inner.by_user.entry(u.clone()).or_default();
                    if ids.is_empty() {
                        changed.push(u.clone());
                    }
                    ids.insert(id);
                }
                inner.labels.insert(id, label);
            }
        }
        for user in changed {
            self.interest.changed(Name::User(user));
        }
    }

    /// Forgets connection `id` (it ended).
    pub fn forget(&self, id: u64) {
        self.set(id, None);
    }

    pub fn label_of(&self, id: u64) -> Option<Label> {
        self.lock().labels.get(&id).cloned()
    }

    /// Ids of `user`'s connections.
    pub fn ids_of(&self, user: &str) -> Vec<u64> {
        self.lock()
            .by_user
            .get(user)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Usernames with at least one connection, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut users: Vec<String> = self.lock().by_user.keys().cloned().collect();
        users.sort();
        users
    }
}

/// Takes `id` off `user`; whether that was the user's last connection.
fn unindex(inner: &mut Inner, user: &str, id: u64) -> bool {
    let Some(ids) = inner.by_user.get_mut(user) else {
        return false;
    };
    ids.remove(&id);
    let last = ids.is_empty();
    if last {
        inner.by_user.remove(user);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_several_connections_until_each_leaves() {
        let u = Users::default();
        u.set(1, Some(Label::User("bob".into())));
        u.set(2, Some(Label::User("bob".into())));
        u.set(3, Some(Label::Peer("west".into())));
        assert_eq!(u.names(), vec!["bob".to_owned()]);
        assert_eq!(u.ids_of("bob"), vec![1, 2]);
        u.set(1, None);
        assert_eq!(u.ids_of("bob"), vec![2]);
        assert_eq!(u.label_of(3), Some(Label::Peer("west".into())));
        u.forget(2);
        u.forget(3);
        assert!(u.names().is_empty());
        assert_eq!(u.label_of(3), None);
    }

    #[test]
    fn relabelling_moves_a_connection_between_users() {
        let u = Users::default();
        u.set(7, Some(Label::User("ann".into())));
        u.set(7, Some(Label::User("bob".into())));
        assert!(u.ids_of("ann").is_empty());
        assert_eq!(u.ids_of("bob"), vec![7]);
    }
}
