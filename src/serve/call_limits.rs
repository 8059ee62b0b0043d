//! Caps on what callers can hold in the daemon: open `WatchToken` streams and calls waiting
//! for a token, in all and per caller uid, and how long any call may wait. A call past a cap is
//! refused at once with RESOURCE_EXHAUSTED; an admitted one holds an [`Admission`] that gives
//! its place back when dropped.
//!
//! Only calls that hold something are counted: a `GetToken` answered from the store at once
//! never comes here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Status;

use crate::access::Caller;
use crate::metrics::METRICS;

/// Every cap of the gRPC service, from `[server]`.
pub struct CallLimits {
    /// The longest a call waits for a token, whatever deadline it sends.
    pub max_wait: Duration,
    pub streams: Cap,
    pub waiting: Cap,
}

/// The caps, as `[server]` sets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub max_wait: Duration,
    pub max_watch_streams: usize,
    pub max_watch_streams_per_uid: usize,
    pub max_waiting_calls: usize,
    pub max_waiting_calls_per_uid: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_wait: Duration::from_secs(60),
            // A stream costs about 6 KiB in the daemon (2,000 open, tests/hostile_caller
            // streams.rs): 4,096 of them stay under 26 MiB, and a host whose every process
            // watches a token has far fewer.
            max_watch_streams: 4096,
            max_watch_streams_per_uid: 1024,
            // A waiting call costs less than a stream; these callers are only waiting for a
            // first token or a refresh, a few per process at most.
            max_waiting_calls: 4096,
            max_waiting_calls_per_uid: 1024,
        }
    }
}

impl CallLimits {
    pub fn of(server: &Settings) -> CallLimits {
        CallLimits {
            max_wait: server.max_wait,
            streams: Cap::new(
                "WatchToken streams",
                "max_watch_streams",
                server.max_watch_streams,
                server.max_watch_streams_per_uid,
            ),
            waiting: Cap::new(
                "calls waiting for a token",
                "max_waiting_calls",
                server.max_waiting_calls,
                server.max_waiting_calls_per_uid,
            ),
        }
    }
}

/// The defaults of `[server]`.
impl Default for CallLimits {
    fn default() -> Self {
        CallLimits::of(&Settings::default())
    }
}

/// Who a call counts against: a local caller by uid; TCP and unidentified callers, who cannot
/// be told apart, together as one.
type CallerKey = Option<u32>;

fn key(caller: &Caller) -> CallerKey {
    match caller {
        Caller::Local { uid, .. } => Some(*uid),
        Caller::Tcp | Caller::Unknown => None,
    }
}

/// One kind of held call, capped in all and per caller.
pub struct Cap {
    inner: Arc<CapInner>,
}

struct CapInner {
    /// What is counted, for messages ("WatchToken streams").
    what: &'static str,
    /// Its config key, for messages that say what to raise.
    key: &'static str,
    total: usize,
    per_caller: usize,
    /// Checked first and without a lock, so a flood past the total cap is turned away by one
    /// atomic add.
    open: AtomicUsize,
    /// Held only for one map update; entries are removed at zero, so the map holds the callers
    /// with something open, at most `total` of them.
    by_caller: Mutex<HashMap<CallerKey, usize>>,
}

/// A call past a cap.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("too many {what} open in all (limit {limit}, server.{key}); try again later")]
    Total {
        what: &'static str,
        key: &'static str,
        limit: usize,
    },
    #[error(
        "too many {what} open by {caller} (limit {limit}, server.{key}_per_uid); close some first"
    )]
    PerCaller {
        what: &'static str,
        key: &'static str,
        limit: usize,
        /// "uid N", or "TCP and unidentified callers".
        caller: String,
    },
}

impl From<Refused> for Status {
    fn from(e: Refused) -> Status {
        Status::resource_exhausted(e.to_string())
    }
}

impl Cap {
    pub fn new(what: &'static str, key: &'static str, total: usize, per_caller: usize) -> Cap {
        Cap {
            inner: Arc::new(CapInner {
                what,
                key,
                total,
                per_caller,
                open: AtomicUsize::new(0),
                by_caller: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// A place for one more call of `caller`, or why there is none.
    pub fn admit(&self, caller: &Caller) -> Result<Admission, Refused> {
        let inner = &self.inner;
        if inner.open.fetch_add(1, Ordering::AcqRel) >= inner.total {
            inner.open.fetch_sub(1, Ordering::AcqRel);
            METRICS.call_refused(inner.key, "total");
            return Err(Refused::Total {
                what: inner.what,
                key: inner.key,
                limit: inner.total,
            });
        }
        let key = key(caller);
        {
            let mut by_caller = inner.by_caller.lock().unwrap_or_else(|e| e.into_inner());
            let count = by_caller.entry(key).or_insert(0);
            if *count < inner.per_caller {
                *count += 1;
                return Ok(Admission {
                    cap: inner.clone(),
                    key,
                });
            }
        }
        inner.open.fetch_sub(1, Ordering::AcqRel);
        METRICS.call_refused(inner.key, "per_uid");
        Err(Refused::PerCaller {
            what: inner.what,
            key: inner.key,
            limit: inner.per_caller,
            caller: match key {
                Some(uid) => format!("uid {uid}"),
                None => "TCP and unidentified callers".into(),
            },
        })
    }

    /// How many calls hold a place now.
    pub fn open(&self) -> usize {
        self.inner.open.load(Ordering::Acquire)
    }
}

/// One admitted call's place; given back when dropped.
pub struct Admission {
    cap: Arc<CapInner>,
    key: CallerKey,
}

impl Drop for Admission {
    fn drop(&mut self) {
        {
            let mut by_caller = self.cap.by_caller.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = by_caller.get_mut(&self.key) {
                *count -= 1;
                if *count == 0 {
                    by_caller.remove(&self.key);
                }
            }
        }
        self.cap.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(uid: u32) -> Caller {
        Caller::Local {
            uid,
            gid: uid,
            pid: None,
            process: Err(crate::attest::process::Unattested::Gone),
        }
    }

    #[test]
    fn per_caller_cap_leaves_room_for_others() {
        let cap = Cap::new("things", "max_things", 5, 2);
        let a: Vec<_> = (0..2).map(|_| cap.admit(&uid(1)).unwrap()).collect();
        let err = cap.admit(&uid(1)).err().unwrap();
        assert!(matches!(err, Refused::PerCaller { limit: 2, .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "too many things open by uid 1 (limit 2, server.max_things_per_uid); close some first"
        );
        let b = cap.admit(&uid(2)).unwrap();
        assert_eq!(cap.open(), 3);
        drop(a);
        assert_eq!(cap.open(), 1);
        cap.admit(&uid(1)).unwrap();
        drop(b);
        assert_eq!(cap.open(), 0);
        assert!(
            cap.inner.by_caller.lock().unwrap().is_empty(),
            "no leftovers"
        );
    }

    #[test]
    fn total_cap_holds_across_callers() {
        let cap = Cap::new("things", "max_things", 3, 2);
        let _held: Vec<_> = (1..=3).map(|u| cap.admit(&uid(u)).unwrap()).collect();
        let err = cap.admit(&uid(4)).err().unwrap();
        assert!(matches!(err, Refused::Total { limit: 3, .. }), "{err}");
        assert_eq!(cap.open(), 3, "a refusal gives its count back");
        let status = Status::from(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }

    #[test]
    fn tcp_and_unknown_callers_share_one_count() {
        let cap = Cap::new("things", "max_things", 10, 1);
        let _tcp = cap.admit(&Caller::Tcp).unwrap();
        let err = cap.admit(&Caller::Unknown).err().unwrap();
        assert!(err.to_string().contains("TCP and unidentified callers"));
    }
}
