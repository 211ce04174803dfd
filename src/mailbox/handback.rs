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
//! - Scopes nest (a router that routes through another system): each restores the
//!   slot of the scope around it, so a message is handed back to the attempt that made
//!   it, never to an outer one.

use std::cell::RefCell;

use crate::message::AgentMessage;

thread_local! {
    /// `None`: no scope. `Some(None)`: a scope, nothing parked yet.
    static SLOT: RefCell<Option<Option<AgentMessage>>> = const { RefCell::new(None) };
}

/// Runs `attempt` with refused sends handed back; returns its result and the message
/// a refused `send` parked, if any.
pub(crate) fn scope<R>(attempt: impl FnOnce() -> R) -> (R, Option<AgentMessage>) {
    let outer = SLOT.with(|slot| slot.replace(Some(None)));
    // Restored on unwind too, so a panicking router cannot leave a scope open.
    struct Restore(Option<Option<AgentMessage>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            SLOT.with(|slot| *slot.borrow_mut() = outer);
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
pub(crate) fn park(message: AgentMessage) -> Result<(), AgentMessage> {
    SLOT.with(|slot| match slot.borrow_mut().as_mut() {
        Some(parked @ None) => {
            *parked = Some(message);
            Ok(())
        }
        _ => Err(message),
    })
}
