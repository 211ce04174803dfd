//! Receipts: a sender to a durable destination waits until the stream stored its
//! message.
//!
//! The send path asks for a receipt before it dispatches ([`Receipts::expect`]); the
//! node's push, on that same thread, makes it when it queues the parcel
//! ([`Receipts::make`], the sending half rides with the parcel); the send path then
//! takes the receiving half ([`Receipts::take`]) and waits on it. The publisher answers
//! on it once the stream acknowledged the publish, or with why it gave up.
//!
//! # Invariants
//!
//! - Only a sender that asked gets a receipt: a push from the engine's retry timer
//!   (no one waiting) finds no slot and makes none, so no receipt is left behind.
//! - Every slot `expect` adds, `take` removes, whatever the push did.
//! - Sends that do not wait touch one atomic load ([`Receipts::make`] with no slot
//!   outstanding), not the map's lock.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ahash::AHasher;
use tokio::sync::oneshot;

use crate::message::MessageId;

/// The publisher's half: how the store went (`Err`: why it was not stored).
pub(crate) type Receipt = oneshot::Sender<Result<(), String>>;
/// The sender's half.
pub(crate) type Waiting = oneshot::Receiver<Result<(), String>>;

enum Slot {
    /// A sender will wait; the push has not made the receipt (yet).
    Wanted,
    /// The push made it.
    Made(Waiting),
}

/// The receipts senders wait for, by message id.
#[derive(Default)]
pub(crate) struct Receipts {
    outstanding: AtomicUsize,
    slots: Mutex<HashMap<MessageId, Slot, BuildHasherDefault<AHasher>>>,
}

impl Receipts {
    /// The sender of `id` will wait for the store.
    pub(crate) fn expect(&self, id: &MessageId) {
        self.lock().insert(id.clone(), Slot::Wanted);
        self.outstanding.fetch_add(1, Ordering::Release);
    }

    /// The receipt for `id`'s parcel, if its sender waits.
    pub(crate) fn make(&self, id: &MessageId) -> Option<Receipt> {
        // Acquire: pairs with `expect` on the sending thread (the same thread in
        // practice; the ordering keeps it right on any other).
        if self.outstanding.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut slots = self.lock();
        let slot = slots.get_mut(id)?;
        let (tx, rx) = oneshot::channel();
        *slot = Slot::Made(rx);
        Some(tx)
    }

    /// The parcel was not queued after all (the engine retries it later): its sender
    /// does not wait for that.
    pub(crate) fn unmake(&self, id: &MessageId) {
        if let Some(slot) = self.lock().get_mut(id) {
            *slot = Slot::Wanted;
        }
    }

    /// The receipt to wait on, if the push made one.
    pub(crate) fn take(&self, id: &MessageId) -> Option<Waiting> {
        let slot = self.lock().remove(id);
        if slot.is_some() {
            self.outstanding.fetch_sub(1, Ordering::Release);
        }
        match slot? {
            Slot::Made(rx) => Some(rx),
            Slot::Wanted => None,
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<MessageId, Slot, BuildHasherDefault<AHasher>>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}
