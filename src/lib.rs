//! Erlang-style message passing for AI agents in one process.
//!
//! Agents have mailboxes; others reach them by pid with the OTP verbs: **call**
//! (request and reply), **cast** (fire and forget) and **info** (system notices).
//! Mailboxes are lock-free multi-priority queues; delivery comes with at-most-once,
//! at-least-once or exactly-once guarantees.
//!
//! # Hello, agents
//!
//! ```
//! use std::time::Duration;
//! use terraphim_agent_messaging::{AgentMessage, AgentPid, MessageSystem, RouterConfig};
//!
//! let system = MessageSystem::new(RouterConfig::default());
//! let (client, server) = (AgentPid::new(), AgentPid::new());
//! system.register_agent(server.clone())?;
//!
//! // The server answers calls on its own thread.
//! let mailbox = system.get_mailbox(&server).unwrap();
//! let worker = std::thread::spawn(move || {
//!     while let Ok(message) = mailbox.receive() {
//!         if let AgentMessage::Call { payload, reply_to, .. } = message {
//!             let n = *payload.downcast::<u64>().unwrap();
//!             reply_to.send(Box::new(n * n)).ok();
//!         }
//!     }
//! });
//!
//! let answer: u64 = system.call_typed(client, &server, 12u64, Duration::from_secs(1))?;
//! assert_eq!(answer, 144);
//!
//! system.shutdown()?; // the worker's receive returns ChannelClosed
//! worker.join().unwrap();
//! # Ok::<(), terraphim_agent_messaging::MessagingError>(())
//! ```
//!
//! # Two flavours
//!
//! The crate root is the sync core: sends never block, `receive`, `receive_timeout` and
//! `call` block the calling thread. [`AgentMailbox::receive_async`] works on any
//! executor.
//!
//! # Guarantees
//!
//! - A mailbox hands out `Critical` before `High` before `Normal` before `Low`, FIFO
//!   within a priority from one sender.
//! - A bounded mailbox never holds more than `max_messages`.
//! - Every message accepted is delivered, dead-lettered (see
//!   [`MessageSystem::dead_letters`]) or still pending: nothing is dropped silently.
//!
//! # Layers
//!
//! The modules, bottom up. Each imports only from the layers below it (and from
//! itself); `tests/layering.rs` fails the build when one reaches up.
//!
//! | layer | what |
//! |---|---|
//! | `sync` | the one import point for atomics, locks, threads and cells (loom or std) |
//! | `stats` | striped counters |
//! | `timer` | the wheel, the clock, and the timer service (clock + driver + its loop) |
//! | `breaker` | one destination's circuit breaker (an atomic word) |
//! | `wait` | the wait cell a receiver or a caller parks in |
//! | `message` | pids, ids, messages, envelopes, the reply slot |
//! | `error` | `MessagingError` |
//! | `dead_letter` | the dead-letter store |
//! | `mailbox` | lock-free priority lanes, the receiver claim, the handles |
//! | `group` | groups of mailboxes and their balancing |
//! | `table` | the slab of destinations by pid, and `MailboxManager` over it |
//! | `router` | where one attempt goes: the table, or a custom router |
//! | `delivery` | the delivery engine: guarantees, retries, acks, the ledger |
//! | `cluster` | cargo feature `nats`: nodes on NATS JetStream, a second kind of destination behind the engine |
//! | `system` | `MessageSystem`: everything wired together |
//! | `tokio` | the async twins |
//!
//! A message's path: `MessageSystem::send_message` → the engine (`delivery`: dedupe,
//! track if an ack is asked) → a `Destination` (`router`: lookup, group pick, breaker)
//! → the `table` slot → the `mailbox` → a priority lane → the receiver. A refused push
//! comes back to the engine, which parks it on the system's timer wheel; the timer
//! service's loop (a thread, or a tokio task) fires it into the engine again.
#![deny(unsafe_code)]
#![warn(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks,
    clippy::missing_safety_doc
)]

mod sync;

/// The README's examples run as doc-tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod breaker;
#[cfg(feature = "nats")]
mod cluster;
mod dead_letter;
mod delivery;
mod error;
mod group;
mod mailbox;
mod message;
mod router;
mod stats;
mod system;
mod table;
pub mod timer;
#[cfg(all(feature = "tokio", not(loom)))]
pub mod tokio;
mod wait;

/// Internals exposed for the loom models and white-box tests. Not a stable API.
#[doc(hidden)]
pub mod __private {
    use crate::{AgentId, AgentPid, MessageSystem};

    /// The registration id of `pid`.
    pub fn agent_id(system: &MessageSystem, pid: &AgentPid) -> Option<AgentId> {
        system.mailboxes().table().id_of(pid)
    }

    /// Whether registration `id` of `pid` is still live.
    pub fn is_live(system: &MessageSystem, id: AgentId, pid: &AgentPid) -> bool {
        system.mailboxes().table().get_by_id(id, pid).is_some()
    }

    /// Forces the next registration generation (to test wrap-around).
    pub fn set_next_generation(system: &MessageSystem, generation: u32) {
        system.mailboxes().table().set_next_generation(generation);
    }

    /// What one pop attempt on a [`LaneModel`] found.
    #[cfg(loom)]
    pub type Pop<T> = crate::mailbox::lane::Pop<T>;

    /// One lane on its own, for loom models that drive it below the mailbox (a consumer
    /// that takes one attempt at a time and never spins).
    #[cfg(loom)]
    pub struct LaneModel<T>(crate::mailbox::lane::Lane<T>);

    #[cfg(loom)]
    impl<T> LaneModel<T> {
        /// An empty lane.
        #[allow(clippy::new_without_default)]
        pub fn new() -> Self {
            LaneModel(crate::mailbox::lane::Lane::new())
        }

        /// Appends `value`, or hands it back if the lane is closed.
        pub fn push(&self, value: T) -> Result<usize, T> {
            self.0.get().push(value)
        }

        /// One attempt to take the next value.
        ///
        /// # Safety
        ///
        /// One consumer at a time (as the mailbox's receiver claim ensures).
        #[allow(unsafe_code)]
        pub unsafe fn pop(&self) -> Pop<T> {
            // SAFETY: forwarded to the caller.
            unsafe { self.0.get().pop() }
        }

        /// Closes the lane; `true` if this call closed it.
        pub fn close(&self) -> bool {
            self.0.get().close()
        }
    }

    /// Lane blocks alive in this thread's loom model (0 between iterations).
    #[cfg(loom)]
    pub fn live_lane_blocks() -> isize {
        crate::mailbox::lane::LIVE_BLOCKS.with(|n| n.get())
    }
}

pub use crate::breaker::{BreakerState, CircuitBreakerConfig};
#[cfg(feature = "nats")]
pub use crate::cluster::{ClusterConfig, ClusterStats};
pub use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadMessage};
pub use crate::delivery::{
    DeliveryConfig, DeliveryGuarantee, DeliveryManager, DeliveryRecord, DeliveryStats,
    DeliveryStatus, RetryPolicy, RouterConfig,
};
pub use crate::error::{ErrorCategory, MessagingError, MessagingResult, TrySendError};
pub use crate::group::LoadBalance;
pub use crate::mailbox::{AgentMailbox, MailboxConfig, MailboxSender, MailboxStats, ReceiveFuture};
pub use crate::message::{
    reply_channel, AgentMessage, AgentPid, DeliveryOptions, MessageEnvelope, MessageId,
    MessagePriority, Payload, ReplyError, ReplyReceiver, ReplySender, SupervisorId, SystemInfo,
    TypedMessage,
};
pub use crate::router::{MessageRouter, RouterStats};
pub use crate::system::{CallFuture, DefaultMessageRouter, MessageSystem, MessageSystemBuilder};
pub use crate::table::manager::MailboxManager;
pub use crate::table::AgentId;
pub use crate::timer::driver::TimerDriver;
pub use crate::timer::{
    Clock, Elapsed, ManualClock, RescheduleError, SystemClock, TickSource, TimerKey, TimerWheel,
    TICK,
};
