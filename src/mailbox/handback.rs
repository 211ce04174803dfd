//! Handing refused messages back to the delivery engine instead of dead-lettering them.
//!
//! A custom router delivers through the `MailboxSender`s it was given, and
//! `MailboxSender::send` dead-letters a message the mailbox refuses. When the delivery
//! engine makes the attempt (and may retry it), that message is still the engine's to
//! settle: inside [`scope`], a refused `send` on this thread parks the message here and
//! the engine takes it back, so it is retried or dead-lettered once, by the engine.
//!
//! # Invariants
//!
//! - Outside a scope nothing is parked: `send` dead-letters as documented.
//! - At most one message is parked per scope (the attempt's own); a second refused
//!   `send` in the same scope dead-letters as usual.
//! - A parked message the engine does not take back (the router answered `Ok`) is
//!   buried where `send` would have put it ([`Parked::bury`]): never dropped.
//! - Scopes nest (a router that routes through another system): each restores the
//!   slot of the scope around it, so a message is handed back to the attempt that made
//!   it, never to an outer one.

use std::cell::RefCell;

use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadLetters};
use crate::message::{AgentMessage, AgentPid};
use crate::sync::Arc;

/// A refused message, with where `send` would have dead-lettered it.
pub(crate) struct Parked {
    message: AgentMessage,
    to: AgentPid,
    reason: DeadLetterReason,
    store: Arc<DeadLetters>,
}

impl Parked {
    /// The message, taken back by the engine.
    pub(crate) fn into_message(self) -> AgentMessage {
        self.message
    }

    /// Dead-letters it as `send` would have.
    pub(crate) fn bury(self) {
        let letter = DeadLetter::message(self.to, self.message.disarm(), self.reason);
        self.store.push(letter);
    }
}

thread_local! {
    /// `None`: no scope. `Some(None)`: a scope, nothing parked yet.
    static SLOT: RefCell<Option<Option<Parked>>> = const { RefCell::new(None) };
}

/// Runs `attempt` with refused sends handed back; returns its result and the message
/// a refused `send` parked, if any.
pub(crate) fn scope<R>(attempt: impl FnOnce() -> R) -> (R, Option<Parked>) {
    let outer = SLOT.with(|slot| slot.replace(Some(None)));
    // Restored on unwind too, so a panicking router cannot leave a scope open.
    struct Restore(Option<Option<Parked>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            let inner = SLOT.with(|slot| std::mem::replace(&mut *slot.borrow_mut(), outer));
            // Unwinding out of the attempt: nobody takes the parked message back.
            if let Some(Some(parked)) = inner {
                parked.bury();
            }
        }
    }
    let restore = Restore(outer);
    let result = attempt();
    let parked = SLOT.with(|slot| slot.borrow_mut().as_mut().and_then(Option::take));
    drop(restore);
    (result, parked)
}

/// Parks a refused message for the engine's attempt in progress on this thread, or
/// hands it back when there is none (or one is parked already).
pub(crate) fn park(
    message: AgentMessage,
    to: &AgentPid,
    reason: DeadLetterReason,
    store: &Arc<DeadLetters>,
) -> Result<(), AgentMessage> {
    SLOT.with(|slot| match slot.borrow_mut().as_mut() {
        Some(parked @ None) => {
            *parked = Some(Parked {
                message,
                to: to.clone(),
                reason,
                store: store.clone(),
            });
            Ok(())
        }
        _ => Err(message),
    })
}
