//! The agent table: a slab of mailboxes with generation-checked slots, indexed by pid.
//!
//! # Invariants
//!
//! - `by_pid[pid] == index` iff `slots[index]` is occupied by `pid`'s entry.
//! - Every insert takes a fresh `generation` from a wrapping counter; an [`AgentId`]
//!   (slot index + generation) names one registration, so a stale id fails its lookup
//!   after the slot is reused. Lookups by id also compare the pid, which keeps them
//!   correct even after the generation counter wraps.
//! - Handles given out ([`MailboxSender`](crate::MailboxSender),
//!   [`AgentMailbox`](crate::AgentMailbox)) hold the mailbox itself, not a slot index:
//!   after unregister they reach the closed mailbox (`ChannelClosed`), never the
//!   agent that reuses the slot.
//!
//! Reads (routing by pid) take the read lock for one hash lookup and one push; only
//! register and unregister write.

use std::hash::BuildHasherDefault;

use ahash::AHasher;
use slab::Slab;

use crate::mailbox::shared::Shared;
use crate::message::AgentPid;
use crate::sync::{read, write, Arc, RwLock};

type PidMap<V> = std::collections::HashMap<AgentPid, V, BuildHasherDefault<AHasher>>;

/// One registration: slot index plus the generation it was inserted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgentId {
    index: u32,
    generation: u32,
}

/// What a slot holds.
pub(crate) struct Entry {
    pub(crate) pid: AgentPid,
    generation: u32,
    pub(crate) mailbox: Arc<Shared>,
}

#[derive(Default)]
struct Inner {
    slots: Slab<Entry>,
    by_pid: PidMap<u32>,
    /// The next generation to hand out (wrapping).
    next_generation: u32,
}

/// Registered agents.
#[derive(Default)]
pub(crate) struct AgentTable {
    inner: RwLock<Inner>,
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
        let mut inner = write(&self.inner);
        let inner = &mut *inner;
        if inner.by_pid.contains_key(&mailbox.pid) {
            return Err(InsertError::Duplicate);
        }
        let entry = inner.slots.vacant_entry();
        let index = u32::try_from(entry.key()).map_err(|_| InsertError::Full)?;
        let generation = inner.next_generation;
        inner.next_generation = generation.wrapping_add(1);
        inner.by_pid.insert(mailbox.pid.clone(), index);
        entry.insert(Entry {
            pid: mailbox.pid.clone(),
            generation,
            mailbox,
        });
        Ok(AgentId { index, generation })
    }

    /// Removes `pid`'s entry and returns its mailbox.
    pub(crate) fn remove(&self, pid: &AgentPid) -> Option<Arc<Shared>> {
        let mut inner = write(&self.inner);
        let index = inner.by_pid.remove(pid)?;
        Some(inner.slots.remove(index as usize).mailbox)
    }

    /// Removes every entry, returning their mailboxes.
    pub(crate) fn clear(&self) -> Vec<Arc<Shared>> {
        let mut inner = write(&self.inner);
        inner.by_pid.clear();
        inner.slots.drain().map(|e| e.mailbox).collect()
    }

    /// Runs `f` on `pid`'s mailbox under the read lock.
    #[inline]
    pub(crate) fn with<R>(&self, pid: &AgentPid, f: impl FnOnce(&Arc<Shared>) -> R) -> Option<R> {
        let inner = read(&self.inner);
        let index = *inner.by_pid.get(pid)?;
        inner.slots.get(index as usize).map(|e| f(&e.mailbox))
    }

    /// `pid`'s mailbox.
    pub(crate) fn get(&self, pid: &AgentPid) -> Option<Arc<Shared>> {
        self.with(pid, Arc::clone)
    }

    /// The id of `pid`'s current registration.
    pub(crate) fn id_of(&self, pid: &AgentPid) -> Option<AgentId> {
        let inner = read(&self.inner);
        let index = *inner.by_pid.get(pid)?;
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
            .filter(|e| e.generation == id.generation && e.pid == *pid)
            .map(|e| e.mailbox.clone())
    }

    /// Registered agents.
    pub(crate) fn len(&self) -> usize {
        read(&self.inner).slots.len()
    }

    /// Runs `f` on every mailbox under the read lock.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<Shared>)) {
        for (_, e) in read(&self.inner).slots.iter() {
            f(&e.mailbox);
        }
    }

    /// Every registered pid.
    pub(crate) fn pids(&self) -> Vec<AgentPid> {
        read(&self.inner)
            .slots
            .iter()
            .map(|(_, e)| e.pid.clone())
            .collect()
    }

    /// Forces the next generation (tests of generation wrap).
    #[doc(hidden)]
    pub(crate) fn set_next_generation(&self, generation: u32) {
        write(&self.inner).next_generation = generation;
    }
}
