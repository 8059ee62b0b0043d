//! Counting open connections, in total and per peer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

/// Whom a connection counts against, besides the total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Peer {
    /// A Unix socket caller, by the uid the kernel reports for it (SO_PEERCRED).
    Uid(u32),
    /// Every TCP caller: they cannot be told apart, so they share one allowance.
    Tcp,
}

/// Which cap a refused connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    Peer,
}

/// Open connections, in total and per peer; shared by every listener.
#[derive(Debug)]
pub struct Limits {
    pub max_total: usize,
    pub max_per_peer: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Only peers with an open connection: the map stays as small as the set of callers.
    per_peer: HashMap<Peer, usize>,
}

impl Limits {
    pub fn new(max_total: usize, max_per_peer: usize) -> Limits {
        Limits {
            max_total,
            max_per_peer,
            counts: Mutex::default(),
        }
    }

    pub fn admit(self: &Arc<Self>, peer: Peer) -> Result<Slot, Refused> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(Refused::Total);
        }
        if counts.per_peer.get(&peer).copied().unwrap_or(0) >= self.max_per_peer {
            return Err(Refused::Peer);
        }
        counts.total += 1;
        *counts.per_peer.entry(peer).or_insert(0) += 1;
        Ok(Slot {
            limits: self.clone(),
            peer,
        })
    }

    fn release(&self, peer: Peer) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                counts.per_peer.remove(&peer);
            }
        }
    }
}

/// One admitted connection's place under the caps; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    limits: Arc<Limits>,
    peer: Peer,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.release(self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_total: usize, max_per_peer: usize) -> Arc<Limits> {
        Arc::new(Limits::new(max_total, max_per_peer))
    }

    fn open(limits: &Limits) -> (usize, usize) {
        let counts = limits.counts.lock().unwrap();
        (counts.total, counts.per_peer.len())
    }

    #[test]
    fn per_peer_cap_leaves_room_for_others() {
        let l = limits(4, 2);
        let a: Vec<Slot> = (0..2).map(|_| l.admit(Peer::Uid(1000)).unwrap()).collect();
        assert_eq!(l.admit(Peer::Uid(1000)).unwrap_err(), Refused::Peer);
        let b = l.admit(Peer::Uid(1001)).unwrap();
        let tcp = l.admit(Peer::Tcp).unwrap();
        // The total is reached: even a peer under its own cap is refused.
        assert_eq!(l.admit(Peer::Uid(1002)).unwrap_err(), Refused::Total);
        assert_eq!(open(&l), (4, 3));
        drop(b);
        drop(tcp);
        assert_eq!(l.admit(Peer::Uid(1000)).unwrap_err(), Refused::Peer);
        let c = l.admit(Peer::Uid(1002)).unwrap();
        drop(a);
        drop(c);
        assert_eq!(
            open(&l),
            (0, 0),
            "slots are given back and empty peers forgotten"
        );
    }

    #[test]
    fn refusals_change_no_count() {
        let l = limits(1, 1);
        let a = l.admit(Peer::Uid(1)).unwrap();
        for _ in 0..10 {
            assert!(l.admit(Peer::Uid(1)).is_err());
            assert!(l.admit(Peer::Uid(2)).is_err());
        }
        assert_eq!(open(&l), (1, 1));
        drop(a);
        assert_eq!(open(&l), (0, 0));
    }
}
