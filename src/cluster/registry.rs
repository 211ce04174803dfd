//! Location transparency: which node owns a pid, mirrored on every node.
//!
//! The registry is a JetStream key-value bucket, `{prefix}_registry`:
//!
//! | key | value | written |
//! |---|---|---|
//! | `pid.{pid}` | the owning node's name | `register_agent` (put), `unregister_agent` (delete), a clean `shutdown` of a node without persistence (delete), the survivors once that node's lease lapsed (delete, revision-checked) |
//! | `node.{node}` | the node's [`LeaseValue`] (JSON) | every third of the lease (heartbeat); a clean `shutdown` deletes it, or, on a durable node, marks it `left` |
//!
//! Each node watches the whole bucket and keeps a mirror of it in memory, so a send
//! to a remote pid resolves with one read lock, no round trip. Whether a pid resolves
//! depends on its node ([`Owner`]):
//!
//! - **live**: its lease is fresh (the mirror notes, on its own monotonic clock, when
//!   it last saw each node's heartbeat; no clocks are compared across machines; a
//!   lease seen only in the initial snapshot counts from the moment it was seen);
//! - **down but durable**: a node with persistence (`enable_persistence`) that left
//!   or whose lease lapsed: its stream consumer keeps what is sent to it, so
//!   at-least-once and exactly-once messages still resolve (they wait on file for
//!   the node's return) and at-most-once messages and calls do not;
//! - **gone**: a node without persistence whose lease lapsed: its pids do not resolve,
//!   and each survivor deletes its entries from the bucket ([`Registry::lapsed`]),
//!   each delete checked against the revision it saw, so a node that came back (a
//!   newer lease) or a pid registered again elsewhere is never deleted by mistake.
//!
//! # Invariants
//!
//! - The mirror only grows from the watch (and the node's own writes): a pid just
//!   registered on another node resolves here once the watch has delivered it,
//!   typically within milliseconds; before that, a send to it is `AgentNotFound`.
//! - This node's own registrations are also kept apart from the mirror, so that
//!   entries deleted while it was cut off (its lease lapsed on the others) are written
//!   back by its next heartbeat ([`Registry::missing_own`]).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use ahash::AHasher;
use async_nats::jetstream::kv::{Entry, Operation};
use serde::{Deserialize, Serialize};

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

/// What a node's lease key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LeaseValue {
    /// How long the lease lasts after each renewal, in milliseconds.
    pub(crate) lease_ms: u64,
    /// The node keeps its agents' messages on file (`enable_persistence`).
    #[serde(default)]
    pub(crate) durable: bool,
    /// The node left cleanly (a durable node's `shutdown`): not live, still durable.
    #[serde(default)]
    pub(crate) left: bool,
}

impl LeaseValue {
    pub(crate) fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self)
            .expect("a lease value always encodes")
            .into()
    }

    /// Reads a lease value; `None` for anything else (never trusted as a lease).
    pub(crate) fn decode(bytes: &[u8]) -> Option<LeaseValue> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Where a pid lives, as this node's mirror sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    /// This node.
    Me,
    /// Another node whose lease is fresh.
    Live(Arc<str>),
    /// Another node, down (left or lapsed) but durable: its messages wait on file.
    Durable(Arc<str>),
}

impl Owner {
    pub(crate) fn node<'a>(&'a self, me: &'a Arc<str>) -> &'a Arc<str> {
        match self {
            Owner::Me => me,
            Owner::Live(node) | Owner::Durable(node) => node,
        }
    }
}

/// A pid's entry: its node and the entry's revision.
#[derive(Clone)]
struct PidEntry {
    node: Arc<str>,
    revision: u64,
}

/// When a node's heartbeat was last seen, and what its lease said.
#[derive(Clone, Copy)]
struct Lease {
    seen: Instant,
    value: LeaseValue,
    revision: u64,
}

impl Lease {
    fn lapsed(&self) -> bool {
        self.value.left || self.seen.elapsed() > Duration::from_millis(self.value.lease_ms)
    }
}

/// A node without persistence whose lease lapsed: the entries to delete, with the
/// revisions they were seen at.
pub(crate) struct Lapsed {
    pub(crate) node: Arc<str>,
    pub(crate) lease_revision: u64,
    pub(crate) pids: Vec<(AgentPid, u64)>,
}

/// The in-memory mirror of the bucket (see the module doc).
pub(crate) struct Registry {
    me: Arc<str>,
    pids: RwLock<Map<AgentPid, PidEntry>>,
    leases: RwLock<Map<Arc<str>, Lease>>,
    /// The pids this node registered and has not unregistered (see the invariants).
    own: Mutex<HashSet<AgentPid, BuildHasherDefault<AHasher>>>,
    /// Whether a durable node has ever been seen (until then no send waits for a
    /// store, and the send path reads this flag instead of the mirror).
    durable_seen: AtomicBool,
}

impl Registry {
    pub(crate) fn new(me: &str) -> Self {
        Registry {
            me: me.into(),
            pids: RwLock::new(Map::default()),
            leases: RwLock::new(Map::default()),
            own: Mutex::new(HashSet::default()),
            durable_seen: AtomicBool::new(false),
        }
    }

    /// This node's name.
    pub(crate) fn me(&self) -> &Arc<str> {
        &self.me
    }

    /// Where `pid` lives, if it resolves at all (see the module doc).
    pub(crate) fn owner(&self, pid: &AgentPid) -> Option<Owner> {
        let node = read(&self.pids).get(pid)?.node.clone();
        if node == self.me {
            return Some(Owner::Me);
        }
        let lease = *read(&self.leases).get(&node)?;
        match (lease.lapsed(), lease.value.durable) {
            (false, _) => Some(Owner::Live(node)),
            (true, true) => Some(Owner::Durable(node)),
            (true, false) => None,
        }
    }

    /// The node `pid` resolves to, if any (this node included).
    pub(crate) fn resolve(&self, pid: &AgentPid) -> Option<Arc<str>> {
        self.owner(pid).map(|owner| owner.node(&self.me).clone())
    }

    /// Whether any durable node (this one included) has been seen.
    pub(crate) fn durable_seen(&self) -> bool {
        self.durable_seen.load(Ordering::Relaxed)
    }

    /// Whether `node` is known to keep its messages on file.
    pub(crate) fn is_durable(&self, node: &str) -> bool {
        read(&self.leases)
            .get(node)
            .is_some_and(|l| l.value.durable)
    }

    /// The pids the bucket says this node owns (this run's and an earlier run's).
    pub(crate) fn own_pids(&self) -> Vec<AgentPid> {
        read(&self.pids)
            .iter()
            .filter(|(_, entry)| entry.node == self.me)
            .map(|(pid, _)| pid.clone())
            .collect()
    }

    /// Notes a local registration at once (the watch confirms it later); returns the
    /// entry it replaced in the mirror, for [`undo_own`](Self::undo_own).
    pub(crate) fn insert_own(&self, pid: &AgentPid) -> Option<(Arc<str>, u64)> {
        lock(&self.own).insert(pid.clone());
        let entry = PidEntry {
            node: self.me.clone(),
            revision: 0,
        };
        let previous = write(&self.pids).insert(pid.clone(), entry);
        previous.map(|e| (e.node, e.revision))
    }

    /// Takes back a registration the bucket refused, restoring the mirror's entry.
    pub(crate) fn undo_own(&self, pid: &AgentPid, previous: Option<(Arc<str>, u64)>) {
        lock(&self.own).remove(pid);
        let mut pids = write(&self.pids);
        match previous {
            Some((node, revision)) => {
                pids.insert(pid.clone(), PidEntry { node, revision });
            }
            None => {
                pids.remove(pid);
            }
        }
    }

    /// Whether `node` still takes messages: its lease fresh, or it is durable.
    pub(crate) fn holds_pids(&self, node: &str) -> bool {
        read(&self.leases)
            .get(node)
            .is_some_and(|l| !l.lapsed() || l.value.durable)
    }

    /// Forgets a local registration at once.
    pub(crate) fn remove_own(&self, pid: &AgentPid) {
        lock(&self.own).remove(pid);
        let mut pids = write(&self.pids);
        if pids.get(pid).is_some_and(|e| e.node == self.me) {
            pids.remove(pid);
        }
    }

    /// This node's registrations.
    pub(crate) fn own_registered(&self) -> Vec<AgentPid> {
        lock(&self.own).iter().cloned().collect()
    }

    /// This node's registrations that the bucket no longer has (deleted by the others
    /// while this node was cut off), to be written back.
    pub(crate) fn missing_own(&self) -> Vec<AgentPid> {
        let own = lock(&self.own);
        let pids = read(&self.pids);
        own.iter()
            .filter(|pid| !pids.contains_key(*pid))
            .cloned()
            .collect()
    }

    /// The nodes without persistence whose lease lapsed, with their entries.
    pub(crate) fn lapsed(&self) -> Vec<Lapsed> {
        let leases = read(&self.leases);
        let gone: Vec<(Arc<str>, u64)> = leases
            .iter()
            .filter(|(node, l)| **node != self.me && !l.value.durable && l.lapsed())
            .map(|(node, l)| (node.clone(), l.revision))
            .collect();
        drop(leases);
        if gone.is_empty() {
            return Vec::new();
        }
        let pids = read(&self.pids);
        gone.into_iter()
            .map(|(node, lease_revision)| Lapsed {
                pids: pids
                    .iter()
                    .filter(|(_, e)| e.node == node)
                    .map(|(pid, e)| (pid.clone(), e.revision))
                    .collect(),
                node,
                lease_revision,
            })
            .collect()
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
                let entry = PidEntry {
                    node: node.into(),
                    revision: entry.revision,
                };
                pids.insert(pid, entry);
            }
        } else if let Some(node) = entry.key.strip_prefix("node.") {
            let mut leases = write(&self.leases);
            match LeaseValue::decode(&entry.value) {
                Some(value) if !removed => {
                    if value.durable {
                        self.durable_seen.store(true, Ordering::Relaxed);
                    }
                    let lease = Lease {
                        seen: Instant::now(),
                        value,
                        revision: entry.revision,
                    };
                    leases.insert(node.into(), lease);
                }
                // Deleted, or not a lease: the node is not live.
                _ => {
                    leases.remove(node);
                }
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

fn lock<T>(lock: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock().unwrap_or_else(|p| p.into_inner())
}
