//! Location transparency: which node owns a pid, mirrored on every node.
//!
//! The registry is a JetStream key-value bucket, `{prefix}_registry`:
//!
//! | key | value | written |
//! |---|---|---|
//! | `pid.{pid}` | the owning node's name | `register_agent` (put), `unregister_agent` and a clean `shutdown` (delete) |
//! | `node.{node}` | the node's lease in milliseconds | every third of the lease (heartbeat); deleted by a clean `shutdown` |
//!
//! Each node watches the whole bucket and keeps a mirror of it in memory, so a send
//! to a remote pid resolves with one read lock, no round trip. A pid resolves only
//! while its node's lease is fresh: the mirror notes, on its own monotonic clock, when
//! it last saw each node's heartbeat, so a node that dies without unregistering stops
//! resolving one lease after its last heartbeat (no clocks are compared across
//! machines). A lease seen only in the initial snapshot counts from the moment it was
//! seen.
//!
//! # Invariants
//!
//! - The mirror only grows from the watch (and the node's own writes): a pid just
//!   registered on another node resolves here once the watch has delivered it,
//!   typically within milliseconds; before that, a send to it is `AgentNotFound`.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ahash::AHasher;
use async_nats::jetstream::kv::{Entry, Operation};

use crate::message::AgentPid;

type Map<K, V> = HashMap<K, V, BuildHasherDefault<AHasher>>;

/// The key of `pid` in the bucket.
pub(crate) fn pid_key(pid: &AgentPid) -> String {
    format!("pid.{pid}")
}

/// The lease key of `node`.
pub(crate) fn lease_key(node: &str) -> String {
    format!("node.{node}")
}

/// When a node's heartbeat was last seen, and how long its lease is.
#[derive(Clone, Copy)]
struct Lease {
    seen: Instant,
    lease: Duration,
}

/// The in-memory mirror of the bucket (see the module doc).
pub(crate) struct Registry {
    me: Arc<str>,
    pids: RwLock<Map<AgentPid, Arc<str>>>,
    leases: RwLock<Map<Arc<str>, Lease>>,
}

impl Registry {
    pub(crate) fn new(me: &str) -> Self {
        Registry {
            me: me.into(),
            pids: RwLock::new(Map::default()),
            leases: RwLock::new(Map::default()),
        }
    }

    /// This node's name.
    pub(crate) fn me(&self) -> &Arc<str> {
        &self.me
    }

    /// The live node that owns `pid`, if any (this node included).
    pub(crate) fn resolve(&self, pid: &AgentPid) -> Option<Arc<str>> {
        let node = read(&self.pids).get(pid).cloned()?;
        if node == self.me || self.is_alive(&node) {
            Some(node)
        } else {
            None
        }
    }

    /// Whether `node`'s lease is fresh.
    pub(crate) fn is_alive(&self, node: &str) -> bool {
        read(&self.leases)
            .get(node)
            .is_some_and(|l| l.seen.elapsed() <= l.lease)
    }

    /// The pids the mirror says this node owns (to withdraw them on leaving).
    pub(crate) fn own_pids(&self) -> Vec<AgentPid> {
        read(&self.pids)
            .iter()
            .filter(|(_, node)| **node == self.me)
            .map(|(pid, _)| pid.clone())
            .collect()
    }

    /// Notes a local registration at once (the watch confirms it later).
    pub(crate) fn insert_own(&self, pid: &AgentPid) {
        write(&self.pids).insert(pid.clone(), self.me.clone());
    }

    /// Forgets a local registration at once.
    pub(crate) fn remove(&self, pid: &AgentPid) {
        write(&self.pids).remove(pid);
    }

    /// Applies one entry of the watch.
    pub(crate) fn apply(&self, entry: &Entry) {
        let removed = matches!(entry.operation, Operation::Delete | Operation::Purge);
        if let Some(pid) = entry.key.strip_prefix("pid.") {
            let Ok(uuid) = pid.parse::<uuid::Uuid>() else {
                return;
            };
            let pid = AgentPid(uuid);
            let mut pids = write(&self.pids);
            if removed {
                pids.remove(&pid);
            } else if let Ok(node) = std::str::from_utf8(&entry.value) {
                pids.insert(pid, node.into());
            }
        } else if let Some(node) = entry.key.strip_prefix("node.") {
            let mut leases = write(&self.leases);
            if removed {
                leases.remove(node);
            } else {
                let ms = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                let lease = Lease {
                    seen: Instant::now(),
                    lease: Duration::from_millis(ms),
                };
                leases.insert(node.into(), lease);
            }
        }
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
