//! The tokio flavour: async twins of the sync core, with the seed's async signatures.
//!
//! Like `reqwest` and `reqwest::blocking`, the same names exist twice. This module has
//! async twins of [`MessageSystem`], [`AgentMailbox`], [`MailboxSender`],
//! [`MailboxManager`], [`DeliveryManager`] and [`MessageRouter`], and re-exports every
//! other public type of the crate root, so one line suffices:
//!
//! ```
//! use terraphim_agent_messaging::tokio::{
//!     AgentPid, DeliveryOptions, MessageEnvelope, MessageSystem, RouterConfig,
//! };
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let system = MessageSystem::new(RouterConfig::default());
//! let (a, b) = (AgentPid::new(), AgentPid::new());
//! system.register_agent(a.clone()).await?;
//! system.register_agent(b.clone()).await?;
//!
//! let envelope = MessageEnvelope::new(b.clone(), "greeting".into(),
//!     serde_json::json!({"hi": 1}), DeliveryOptions::default()).with_from(a.clone());
//! system.send_message(envelope).await?;
//!
//! let mailbox = system.get_mailbox(&b).await.unwrap();
//! let message = mailbox.receive().await?; // never blocks a runtime thread
//! assert_eq!(message.from(), Some(&a));
//! system.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The twins wrap the sync core; they add no messaging logic of their own:
//!
//! 1. `timers`: the timer task that turns the core's timer wheel on the
//!    runtime (retries, ack timeouts, call timeouts), sleeping until the next deadline.
//! 2. `mailbox`: [`AgentMailbox`], [`MailboxSender`], [`MailboxManager`].
//! 3. `router`: the async [`MessageRouter`] trait (`#[async_trait]`).
//! 4. `delivery`: [`DeliveryManager`], the seed's tracking API.
//! 5. `system`: [`MessageSystem`] and its builder.
//!
//! # Which methods are async
//!
//! Everything that receives, waits, routes or registers is `async`, as in the seed.
//! Accessors and non-blocking "try" operations (`try_send`, `close`, `is_closed`,
//! `sender`, `dead_letters`, `calculate_retry_delay`, …) stay synchronous, as in
//! `tokio::sync::mpsc`.
//!
//! # Cancel safety
//!
//! Every async method documents it. In short: `receive` (and `receive_timeout`,
//! `wait_for_shutdown`) can be dropped mid-wait without losing a message; every other
//! method does its work in its first poll (or through the custom router's future).
//!
//! # Timers
//!
//! A [`MessageSystem`] built inside a runtime runs its timers on a task of that runtime
//! (no thread); built outside one it falls back to the core's timer thread.
//! `shutdown().await` stops the task. The task lives on the runtime that was current at
//! construction: if that runtime shuts down first, retries stop firing.
//!
//! Receive timeouts and `wait_for_shutdown` use `tokio::time`: the runtime needs its
//! time driver (`enable_time`/`enable_all`, as `#[tokio::main]` does).

mod delivery;
mod mailbox;
mod router;
mod system;
mod timers;

pub use self::delivery::DeliveryManager;
pub use self::mailbox::{AgentMailbox, MailboxManager, MailboxSender};
pub use self::router::MessageRouter;
pub use self::system::{MessageSystem, MessageSystemBuilder};

/// Re-exported so a custom router can write `#[async_trait]` without its own dependency.
pub use async_trait::async_trait;

// Every other public item of the crate root, unchanged.
pub use crate::timer;
pub use crate::{
    reply_channel, AgentId, AgentMessage, AgentPid, BreakerState, CallFuture, CircuitBreakerConfig,
    Clock, DeadLetter, DeadLetterKind, DeadLetterReason, DeadLetterStats, DeadLetterSubscription,
    DeadMessage, DefaultMessageRouter, DeliveryConfig, DeliveryGuarantee, DeliveryOptions,
    DeliveryRecord, DeliveryStats, DeliveryStatus, Elapsed, ErrorCategory, LoadBalance,
    MailboxConfig, MailboxStats, ManualClock, MessageEnvelope, MessageId, MessagePriority,
    MessagingError, MessagingResult, MonitorRef, Payload, ReceiveFuture, ReplyError, ReplyReceiver,
    ReplySender, RescheduleError, RetryPolicy, RouterConfig, RouterStats, SendTimeoutError,
    SupervisorId, SystemClock, SystemInfo, TickSource, TimerDriver, TimerKey, TimerRef, TimerWheel,
    TrySendError, TypedMessage, DEFAULT_DEAD_LETTER_CAPACITY, MAX_NAME_LEN, TICK,
};
#[cfg(feature = "nats")]
pub use crate::{ClusterConfig, ClusterStats};
