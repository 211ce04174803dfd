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
//! - No receive waits on a producer descheduled mid-send: `try_receive` returns within
//!   microseconds, `receive_timeout` by its deadline, and a blocking or async receive
//!   sleeps until that producer's write wakes it.
//! - A bounded mailbox never holds more than `max_messages`.
//! - Every message accepted is delivered, dead-lettered (see
//!   [`MessageSystem::dead_letters`]) or still pending: nothing is dropped silently.
//! - The dead-letter store keeps the newest letters up to its capacity
//!   ([`DEFAULT_DEAD_LETTER_CAPACITY`]); older ones are dropped but counted by reason
//!   ([`MessageSystem::dead_letter_stats`]), so its memory stays bounded under overload.
//!
//! # Observability
//!
//! Two cargo features, off by default, make a running system visible through the
//! ecosystem's facades: `tracing` (spans around calls; events for registrations,
//! routing, refusals, retries, redeliveries, dead letters, breaker transitions and
//! shutdown, with message ids and types as fields) and `metrics` (counters, gauges
//! and histograms for any recorder; `MessageSystem::publish_metrics`,
//! `MessageSystem::watch_depth`). The README lists every event and metric. Without
//! the features neither crate is compiled in.
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
//! | `observe` | `tracing` events and spans, `metrics` counters, gauges and histograms: every one defined here, nothing compiled without the features |
//! | `timer` | the wheel, the clock, and the timer service (clock + driver + its loop) |
//! | `breaker` | one destination's circuit breaker (an atomic word) |
//! | `wait` | the wait cell a receiver or a caller parks in |
//! | `message` | pids, ids, messages, envelopes, the reply slot |
//! | `error` | `MessagingError` |
//! | `dead_letter` | the dead-letter store, bounded |
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
mod observe;
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

    /// A send stopped between claiming its position and writing its message, as a
    /// producer descheduled mid-send leaves it: until [`StalledSend::finish`] (or the
    /// drop) the receiver sees that lane as busy at the claimed position.
    pub struct StalledSend<'a> {
        half: Option<crate::mailbox::shared::HalfSent<'a>>,
        message: Option<crate::AgentMessage>,
    }

    /// Claims a position for `message` at `priority` in `sender`'s mailbox without
    /// writing it; hands the message back if the mailbox is full or closed.
    pub fn stall_send(
        sender: &crate::MailboxSender,
        message: crate::AgentMessage,
        priority: crate::MessagePriority,
    ) -> Result<StalledSend<'_>, crate::AgentMessage> {
        match sender.shared().half_send(priority) {
            Some(half) => Ok(StalledSend {
                half: Some(half),
                message: Some(message),
            }),
            None => Err(message),
        }
    }

    impl StalledSend<'_> {
        /// Writes the message and wakes the receiver, as the send would have.
        pub fn finish(mut self) {
            self.finish_now();
        }

        fn finish_now(&mut self) {
            if let (Some(half), Some(message)) = (self.half.take(), self.message.take()) {
                half.finish(message);
            }
        }
    }

    impl Drop for StalledSend<'_> {
        fn drop(&mut self) {
            self.finish_now();
        }
    }

    /// What one pop attempt on a [`LaneModel`] found.
    pub type Pop<T> = crate::mailbox::lane::Pop<T>;

    /// One lane on its own, for loom models that drive it below the mailbox (a consumer
    /// that takes one attempt at a time and never spins).
    ///
    /// Like the lane, it is `Send` and `Sync` exactly when its values are `Send`: values
    /// move from producers to the consumer, and none is shared. So a `Cell` may travel
    /// through it:
    ///
    /// ```
    /// fn send_sync<T: Send + Sync>() {}
    /// send_sync::<terraphim_agent_messaging::__private::LaneModel<std::cell::Cell<u8>>>();
    /// ```
    ///
    /// but an `Rc` may not (it would let two threads touch one count):
    ///
    /// ```compile_fail,E0277
    /// fn send<T: Send>() {}
    /// send::<terraphim_agent_messaging::__private::LaneModel<std::rc::Rc<u8>>>();
    /// ```
    ///
    /// ```compile_fail,E0277
    /// fn sync<T: Sync>() {}
    /// sync::<terraphim_agent_messaging::__private::LaneModel<std::rc::Rc<u8>>>();
    /// ```
    pub struct LaneModel<T>(crate::mailbox::lane::Lane<T>);

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
            unsafe { self.0.get().pop(crate::wait::Look::Plain) }
        }

        /// Closes the lane; `true` if this call closed it.
        pub fn close(&self) -> bool {
            self.0.get().close()
        }

        /// Gives the lane's block and spare back if it is empty, as a receiver does
        /// before it sleeps.
        ///
        /// # Safety
        ///
        /// One consumer at a time, as for [`LaneModel::pop`].
        #[allow(unsafe_code)]
        pub unsafe fn trim(&self) {
            // SAFETY: forwarded to the caller.
            unsafe { self.0.get().trim() }
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
pub use crate::dead_letter::{
    DeadLetter, DeadLetterKind, DeadLetterReason, DeadLetterStats, DeadLetterSubscription,
    DeadMessage, DEFAULT_DEAD_LETTER_CAPACITY,
};
pub use crate::delivery::{
    DeliveryConfig, DeliveryGuarantee, DeliveryManager, DeliveryRecord, DeliveryStats,
    DeliveryStatus, RetryPolicy, RouterConfig, TimerRef,
};
pub use crate::error::{
    ErrorCategory, MessagingError, MessagingResult, SendTimeoutError, TrySendError,
};
pub use crate::group::LoadBalance;
pub use crate::mailbox::{AgentMailbox, MailboxConfig, MailboxSender, MailboxStats, ReceiveFuture};
pub use crate::message::{
    reply_channel, AgentMessage, AgentPid, DeliveryOptions, MessageEnvelope, MessageId,
    MessagePriority, Payload, ReplyError, ReplyReceiver, ReplySender, SupervisorId, SystemInfo,
    TypedMessage,
};
pub use crate::router::{MessageRouter, RouterStats};
pub use crate::system::{
    CallFuture, DefaultMessageRouter, MessageSystem, MessageSystemBuilder, MonitorRef, MAX_NAME_LEN,
};
pub use crate::table::manager::MailboxManager;
pub use crate::table::AgentId;
pub use crate::timer::driver::TimerDriver;
pub use crate::timer::{
    Clock, Elapsed, ManualClock, RescheduleError, SystemClock, TickSource, TimerKey, TimerWheel,
    TICK,
};
