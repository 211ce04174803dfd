//! The agent table: a slab of destinations (agents' mailboxes and groups) with
//! generation-checked slots, indexed by pid.
//!
//! # Invariants
//!
//! - `by_pid` holds `index` iff `slots[index]` is occupied; it is a hash table of bare
//!   slot indices hashed by the slot's pid (the pid lives once, in the mailbox or
//!   group), which keeps an idle agent's table cost to a slab slot plus 4 bytes.
//! - `groups` holds exactly the groups that occupy slots, so that an agent's
//!   unregister visits the groups (to leave them), never every slot.
//! - Every insert takes a fresh `generation` from a wrapping counter; an [`AgentId`]
//!   (slot index + generation) names one registration, so a stale id fails its lookup
//!   after the slot is reused. Lookups by id also compare the pid, which keeps them
//!   correct even after the generation counter wraps. Under `cfg(loom)` the generation
//!   is a `u8`, so the loom models reach a wrap in a few registrations.
//! - Handles given out ([`MailboxSender`](crate::MailboxSender),
//!   [`AgentMailbox`](crate::AgentMailbox)) hold the mailbox itself, not a slot index:
//!   after unregister they reach the closed mailbox (`ChannelClosed`), never the
//!   agent that reuses the slot.
//!
//! Reads (routing by pid) take the read lock for one hash lookup and one push; only
//! register and unregister write. The lock is sharded (crossbeam's `ShardedLock`): each
//! thread reads through its own shard, so senders on several threads do not bounce one
//! reader count between their caches (2 producers casting by pid: +15%), and a writer
//! takes every shard (registering 1,000,000 agents: ~0.45 → ~0.54 s).

pub(crate) mod manager;

use hashbrown::HashTable;
use slab::Slab;

use crate::group::Group;
use crate::mailbox::shared::Shared;
use crate::message::AgentPid;
use crate::sync::{
    read_sharded as read, write_sharded as write, Arc, ShardedLock, ShardedLockReadGuard,
};

/// A registration's generation: `u8` under loom (the models force a wrap), `u32`
/// otherwise.
#[cfg(loom)]
type Generation = u8;
#[cfg(not(loom))]
type Generation = u32;

/// `generation` as a [`Generation`] (truncated under loom: only the low bits count).
#[cfg(loom)]
fn to_generation(generation: u32) -> Generation {
    generation as Generation
}

#[cfg(not(loom))]
fn to_generation(generation: u32) -> Generation {
    generation
}

/// One registration: slot index plus the generation it was inserted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentId {
    index: u32,
    generation: Generation,
}

/// A destination: an agent's mailbox or a group of agents.
pub(crate) enum Target {
    Agent(Arc<Shared>),
    Group(Arc<Group>),
}

/// What a slot holds.
///
/// The pid is kept here, beside the target, rather than read through the target's
/// `Arc`: a lookup compares it on every routed send, and in a mailbox it would sit in a
/// cache line that the mailbox's receiver writes on every receive.
struct Entry {
    pid: AgentPid,
    generation: Generation,
    target: Target,
}

impl Entry {
    fn pid(&self) -> &AgentPid {
        &self.pid
    }
}

#[derive(Default)]
struct Inner {
    slots: Slab<Entry>,
    by_pid: HashTable<u32>,
    /// How pids are hashed: ahash keyed at random per table (so that crafted pids
    /// cannot be made to collide), with the keys held here. The default `AHasher`
    /// loads process-wide keys through a pointer to a heap block on every hash, and
    /// that block can share a cache line with anything malloc placed beside it.
    keys: ahash::RandomState,
    /// The next generation to hand out (wrapping).
    next_generation: Generation,
    /// Occupied slots holding agents (the rest hold groups).
    agents: usize,
    /// The groups, apart: an agent leaving its groups visits these, not every slot.
    groups: Vec<Arc<Group>>,
}

impl Inner {
    #[inline]
    fn hash(&self, pid: &AgentPid) -> u64 {
        self.keys.hash_one(pid)
    }

    /// The slot of `pid`.
    #[inline]
    fn find(&self, pid: &AgentPid) -> Option<u32> {
        let slots = &self.slots;
        self.by_pid
            .find(self.hash(pid), |&i| slots[i as usize].pid() == pid)
            .copied()
    }

    /// Forgets `pid`'s index; returns it.
    fn unindex(&mut self, pid: &AgentPid) -> Option<u32> {
        let hashed = self.hash(pid);
        let slots = &self.slots;
        let entry = self
            .by_pid
            .find_entry(hashed, |&i| slots[i as usize].pid() == pid)
            .ok()?;
        Some(entry.remove().0)
    }
}

/// A destination found by [`AgentTable::lookup`]: the table stays read-locked (no
/// unregister can free the slot) while this lives.
pub(crate) struct Found<'a> {
    inner: ShardedLockReadGuard<'a, Inner>,
    index: u32,
}

impl Found<'_> {
    /// The destination.
    #[inline]
    pub(crate) fn target(&self) -> &Target {
        &self.inner.slots[self.index as usize].target
    }
}

/// Registered agents.
#[derive(Default)]
pub(crate) struct AgentTable {
    inner: ShardedLock<Inner>,
}

/// Why an insert failed.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InsertError {
    /// The pid is already registered.
    Duplicate,
    /// More than `u32::MAX` agents.
    Full,
}

impl AgentTable {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Registers `mailbox` under its pid.
    pub(crate) fn insert(&self, mailbox: Arc<Shared>) -> Result<AgentId, InsertError> {
        let pid = mailbox.pid.clone();
        self.insert_target(pid, Target::Agent(mailbox))
    }

    /// Registers `group` under its pid.
    pub(crate) fn insert_group(&self, group: Arc<Group>) -> Result<AgentId, InsertError> {
        let pid = group.pid().clone();
        self.insert_target(pid, Target::Group(group))
    }

    fn insert_target(&self, pid: AgentPid, target: Target) -> Result<AgentId, InsertError> {
        let mut inner = write(&self.inner);
        let inner = &mut *inner;
        if inner.find(&pid).is_some() {
            return Err(InsertError::Duplicate);
        }
        let entry = inner.slots.vacant_entry();
        let index = u32::try_from(entry.key()).map_err(|_| InsertError::Full)?;
        let generation = inner.next_generation;
        inner.next_generation = generation.wrapping_add(1);
        match &target {
            Target::Agent(_) => inner.agents += 1,
            Target::Group(group) => inner.groups.push(group.clone()),
        }
        let hashed = inner.keys.hash_one(&pid);
        entry.insert(Entry {
            pid,
            generation,
            target,
        });
        let (slots, keys) = (&inner.slots, &inner.keys);
        inner
            .by_pid
            .insert_unique(hashed, index, |&i| keys.hash_one(slots[i as usize].pid()));
        Ok(AgentId { index, generation })
    }

    /// Removes `pid`'s entry (agent or group) and returns it.
    pub(crate) fn remove(&self, pid: &AgentPid) -> Option<Target> {
        let mut inner = write(&self.inner);
        let index = inner.unindex(pid)?;
        let target = inner.slots.remove(index as usize).target;
        match &target {
            Target::Agent(_) => inner.agents -= 1,
            Target::Group(group) => inner.groups.retain(|g| !Arc::ptr_eq(g, group)),
        }
        Some(target)
    }

    /// Removes `pid` only if it is an agent; returns its mailbox.
    pub(crate) fn remove_agent(&self, pid: &AgentPid) -> Option<Arc<Shared>> {
        let mut inner = write(&self.inner);
        let index = inner.find(pid)?;
        if !matches!(inner.slots.get(index as usize)?.target, Target::Agent(_)) {
            return None;
        }
        inner.unindex(pid);
        inner.agents -= 1;
        match inner.slots.remove(index as usize).target {
            Target::Agent(mailbox) => Some(mailbox),
            Target::Group(_) => unreachable!("checked above"),
        }
    }

    /// Removes every entry, returning them.
    pub(crate) fn clear(&self) -> Vec<Target> {
        let mut inner = write(&self.inner);
        inner.by_pid.clear();
        inner.agents = 0;
        inner.groups.clear();
        inner.slots.drain().map(|e| e.target).collect()
    }

    /// Removes every entry and closes every agent's mailbox (groups just go).
    pub(crate) fn close_all(&self) {
        for target in self.clear() {
            if let Target::Agent(mailbox) = target {
                mailbox.close();
            }
        }
    }

    /// `pid`'s destination, held under the read lock until the returned guard drops.
    #[inline]
    pub(crate) fn lookup(&self, pid: &AgentPid) -> Option<Found<'_>> {
        let inner = read(&self.inner);
        let index = inner.find(pid)?;
        Some(Found { inner, index })
    }

    /// Runs `f` on `pid`'s destination under the read lock.
    #[inline]
    pub(crate) fn with_target<R>(&self, pid: &AgentPid, f: impl FnOnce(&Target) -> R) -> Option<R> {
        let inner = read(&self.inner);
        let index = inner.find(pid)?;
        inner.slots.get(index as usize).map(|e| f(&e.target))
    }

    /// `pid`'s mailbox, if `pid` is an agent.
    pub(crate) fn get(&self, pid: &AgentPid) -> Option<Arc<Shared>> {
        self.with_target(pid, |t| match t {
            Target::Agent(mailbox) => Some(mailbox.clone()),
            Target::Group(_) => None,
        })
        .flatten()
    }

    /// `pid`'s group, if `pid` is a group.
    pub(crate) fn group(&self, pid: &AgentPid) -> Option<Arc<Group>> {
        self.with_target(pid, |t| match t {
            Target::Group(group) => Some(group.clone()),
            Target::Agent(_) => None,
        })
        .flatten()
    }

    /// The id of `pid`'s current registration.
    pub(crate) fn id_of(&self, pid: &AgentPid) -> Option<AgentId> {
        let inner = read(&self.inner);
        let index = inner.find(pid)?;
        let entry = inner.slots.get(index as usize)?;
        Some(AgentId {
            index,
            generation: entry.generation,
        })
    }

    /// The mailbox of registration `id`, if `pid` is still registered under it.
    pub(crate) fn get_by_id(&self, id: AgentId, pid: &AgentPid) -> Option<Arc<Shared>> {
        let inner = read(&self.inner);
        inner
            .slots
            .get(id.index as usize)
            .filter(|e| e.generation == id.generation && e.pid() == pid)
            .and_then(|e| match &e.target {
                Target::Agent(mailbox) => Some(mailbox.clone()),
                Target::Group(_) => None,
            })
    }

    /// Registered destinations (agents and groups).
    pub(crate) fn len(&self) -> usize {
        read(&self.inner).slots.len()
    }

    /// Registered agents.
    pub(crate) fn agents(&self) -> usize {
        read(&self.inner).agents
    }

    /// Runs `f` on every agent's mailbox under the read lock.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<Shared>)) {
        for (_, e) in read(&self.inner).slots.iter() {
            if let Target::Agent(mailbox) = &e.target {
                f(mailbox);
            }
        }
    }

    /// Every group (O(groups): the agents are not visited).
    pub(crate) fn groups(&self) -> Vec<Arc<Group>> {
        read(&self.inner).groups.clone()
    }

    /// Every registered agent's pid.
    pub(crate) fn pids(&self) -> Vec<AgentPid> {
        read(&self.inner)
            .slots
            .iter()
            .filter(|(_, e)| matches!(e.target, Target::Agent(_)))
            .map(|(_, e)| e.pid().clone())
            .collect()
    }

    /// Forces the next generation (tests of generation wrap; truncated under loom).
    #[doc(hidden)]
    pub(crate) fn set_next_generation(&self, generation: u32) {
        write(&self.inner).next_generation = to_generation(generation);
    }
}
