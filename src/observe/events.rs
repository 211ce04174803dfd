//! `tracing` spans and events (cargo feature `tracing`).
//!
//! Each event's target is the module path of what it is about, so `RUST_LOG` can pick
//! one concern (`RUST_LOG=terraphim_agent_messaging::delivery=debug`). Data are fields,
//! never formatted into the message: a message is named by `message_id` (a UUID) and
//! `message_type` wherever it is routed, refused, retried or dead-lettered, so one
//! `grep` of an id follows it.
//!
//! | target (`terraphim_agent_messaging::…`) | level | message | fields |
//! |---|---|---|---|
//! | `system` | DEBUG | `agent registered` / `agent unregistered` | `agent` |
//! | `system` | DEBUG | `group created` / `group joined` / `group left` | `group`, `strategy` / `member` |
//! | `system` | INFO | `message system shut down` | the ledger: `total_messages`, `delivered`, `acknowledged`, `failed`, `expired`, `duplicates`, `pending`, `in_transit`, `dead_letters` |
//! | `system::call` | TRACE span | `call` | `message_id`, `from`, `to`, `timeout` |
//! | `system::call` | TRACE / DEBUG | `call answered` / `call timed out`, `call failed` | `to` / `to`, `error` |
//! | `delivery` | TRACE | `routing` | `message_id`, `message_type`, `to`, `attempt` |
//! | `delivery` | TRACE | `duplicate suppressed`, `acknowledged` | `message_id`, (`message_type`, `to`) |
//! | `delivery` | DEBUG | `refused` | `message_id`, `message_type`, `to`, `attempt`, `reason` |
//! | `delivery` | DEBUG | `retry scheduled` | `message_id`, `message_type`, `to`, `attempt` (the one to come), `delay` |
//! | `delivery` | INFO | `redelivering after a missing ack` | `message_id`, `message_type`, `to`, `attempt`, `copy_suppressed` (exactly-once: the mailbox has it already) |
//! | `router` | TRACE | `group member picked` | `message_id`, `message_type`, `group`, `member` |
//! | `breaker` | WARN | `circuit breaker opened` | `to`, `trips` (consecutive openings) |
//! | `breaker` | INFO | `circuit breaker half-open` / `circuit breaker closed` | `to` |
//! | `dead_letter` | WARN | `dead letter` | `message_id`, `message_type`, `to`, `reason`, `attempts` (expiry is `reason = "expired"`) |
//! | `cluster` | INFO | `cluster node joined` / `cluster node left` | `node`, `url`, `durable`, `took_over` (the name, from a holder that no longer answered) / `node`, `durable` |
//! | `cluster` | INFO | `lapsed node removed` | `node`, `pids` (its registry entries deleted) |
//! | `cluster` | TRACE | `frame received` | `message_id`, `message_type`, `to`, `from_node`, `delivery` (the stream's count) |
//! | `cluster` | DEBUG | `publish retry scheduled` | `message_id`, `message_type`, `to`, `attempt` (the one to come), `delay`, `error` |
//! | `cluster` | DEBUG | `redelivery requested` | `message_id`, `message_type`, `to`, `delivery`, `delay`, `reason` (the mailbox refused it, its agent not registered yet, no acknowledgement) |
//! | `cluster` | DEBUG | `duplicate arrival` | `message_id`, `to` (exactly once: acked, not delivered again) |
//!
//! Without the feature every function here is empty and [`CallSpan`] is zero-sized.

use std::fmt::{Debug, Display};
#[cfg(not(feature = "tracing"))]
use std::marker::PhantomData;
use std::time::Duration;

#[cfg(feature = "tracing")]
use super::IdText;
use super::Traced;

#[cfg(feature = "tracing")]
mod targets {
    pub(super) const SYSTEM: &str = "terraphim_agent_messaging::system";
    pub(super) const CALL: &str = "terraphim_agent_messaging::system::call";
    pub(super) const DELIVERY: &str = "terraphim_agent_messaging::delivery";
    pub(super) const ROUTER: &str = "terraphim_agent_messaging::router";
    pub(super) const BREAKER: &str = "terraphim_agent_messaging::breaker";
    pub(super) const DEAD_LETTER: &str = "terraphim_agent_messaging::dead_letter";
    #[cfg(feature = "nats")]
    pub(super) const CLUSTER: &str = "terraphim_agent_messaging::cluster";
}
#[cfg(feature = "tracing")]
use self::targets::*;

/// `$event` with the `tracing` feature; without it, nothing (the arguments, all
/// borrowed, are only marked used).
///
/// The per-message events (`TRACE`) go through [`hot!`] instead.
macro_rules! traced {
    ($($arg:ident),* => $event:expr) => {{
        #[cfg(feature = "tracing")]
        {
            $event;
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = ($($arg,)*);
        }
    }};
}

/// A per-message `TRACE` event: the fast path pays one load of the global level
/// filter and a branch, and nothing more unless some subscriber wants `TRACE` (so not
/// even `tracing`'s `log` compatibility checks, which a dependency elsewhere in the
/// program may have switched on).
macro_rules! hot {
    ($($arg:ident),* => $event:expr) => {{
        #[cfg(feature = "tracing")]
        {
            if tracing::level_enabled!(tracing::Level::TRACE) {
                $event;
            }
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = ($($arg,)*);
        }
    }};
}

// ===== system =====

/// An agent was registered.
#[inline(always)]
pub(crate) fn registered(agent: &impl Display) {
    traced!(agent => tracing::debug!(target: SYSTEM, agent = %agent, "agent registered"));
}

/// An agent was unregistered.
#[inline(always)]
pub(crate) fn unregistered(agent: &impl Display) {
    traced!(agent => tracing::debug!(target: SYSTEM, agent = %agent, "agent unregistered"));
}

/// A group was created.
#[inline(always)]
pub(crate) fn group_created(group: &impl Display, strategy: &impl Debug) {
    traced!(group, strategy => tracing::debug!(
        target: SYSTEM, group = %group, strategy = ?strategy, "group created"
    ));
}

/// `member` joined `group`.
#[inline(always)]
pub(crate) fn group_joined(group: &impl Display, member: &impl Display) {
    traced!(group, member => tracing::debug!(
        target: SYSTEM, group = %group, member = %member, "group joined"
    ));
}

/// `member` left `group`.
#[inline(always)]
pub(crate) fn group_left(group: &impl Display, member: &impl Display) {
    traced!(group, member => tracing::debug!(
        target: SYSTEM, group = %group, member = %member, "group left"
    ));
}

/// The delivery ledger at shutdown (`DeliveryStats` and the dead letters).
#[derive(Debug, Clone, Copy, Default)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct Ledger {
    pub(crate) total_messages: u64,
    pub(crate) delivered: u64,
    pub(crate) acknowledged: u64,
    pub(crate) failed: u64,
    pub(crate) expired: u64,
    pub(crate) duplicates: u64,
    pub(crate) pending: u64,
    pub(crate) in_transit: u64,
    pub(crate) dead_letters: u64,
}

/// The system shut down; `ledger` is read only if the event is enabled.
#[inline(always)]
pub(crate) fn shut_down(ledger: impl FnOnce() -> Ledger) {
    traced!(ledger => {
        if tracing::enabled!(target: SYSTEM, tracing::Level::INFO) {
            let l = ledger();
            tracing::info!(
                target: SYSTEM,
                total_messages = l.total_messages,
                delivered = l.delivered,
                acknowledged = l.acknowledged,
                failed = l.failed,
                expired = l.expired,
                duplicates = l.duplicates,
                pending = l.pending,
                in_transit = l.in_transit,
                dead_letters = l.dead_letters,
                "message system shut down"
            );
        }
    });
}

// ===== calls =====

/// The span of one call, from its send to its reply (or timeout): events on the way
/// (routing, refusals, the outcome) are inside it. Zero-sized without the feature.
#[derive(Clone)]
pub(crate) struct CallSpan {
    /// `None` unless some subscriber wants `TRACE`: a disabled span still costs its
    /// enter and exit on every poll (and `log` records, with `tracing`'s `log`
    /// feature).
    #[cfg(feature = "tracing")]
    span: Option<tracing::Span>,
}

/// A [`CallSpan`] entered; leaves it on drop.
pub(crate) struct Entered<'a> {
    #[cfg(feature = "tracing")]
    _entered: Option<tracing::span::Entered<'a>>,
    #[cfg(not(feature = "tracing"))]
    _span: PhantomData<&'a ()>,
}

impl CallSpan {
    /// The span of the call `id` from `from` to `to` (disabled unless `TRACE` is on
    /// for `system::call`).
    #[inline(always)]
    pub(crate) fn new(
        id: &impl Display,
        from: Option<&impl Display>,
        to: &impl Display,
        timeout: Duration,
    ) -> Self {
        #[cfg(feature = "tracing")]
        {
            let span = tracing::level_enabled!(tracing::Level::TRACE).then(|| {
                tracing::trace_span!(
                    target: CALL,
                    "call",
                    message_id = %id,
                    from = from.map(tracing::field::display),
                    to = %to,
                    timeout = ?timeout
                )
            });
            CallSpan { span }
        }
        #[cfg(not(feature = "tracing"))]
        {
            let _ = (id, from, to, timeout);
            CallSpan {}
        }
    }

    /// Enters the span until the guard drops.
    #[inline(always)]
    pub(crate) fn enter(&self) -> Entered<'_> {
        Entered {
            #[cfg(feature = "tracing")]
            _entered: self.span.as_ref().map(tracing::Span::enter),
            #[cfg(not(feature = "tracing"))]
            _span: PhantomData,
        }
    }
}

/// The reply arrived (inside the call's span).
#[inline(always)]
pub(crate) fn call_answered(to: &impl Display) {
    hot!(to => tracing::trace!(target: CALL, to = %to, "call answered"));
}

/// No reply within the timeout (the span has the timeout).
#[inline(always)]
pub(crate) fn call_timed_out(to: &impl Display) {
    traced!(to => tracing::debug!(target: CALL, to = %to, "call timed out"));
}

/// The call failed otherwise (not sent, or dropped without a reply).
#[inline(always)]
pub(crate) fn call_failed(to: &impl Display, error: &impl Display) {
    traced!(to, error => tracing::debug!(target: CALL, to = %to, error = %error, "call failed"));
}

// ===== delivery =====

/// An attempt to push `message` to `to` (the first is attempt 1).
#[inline(always)]
pub(crate) fn routing(to: &impl Display, message: &impl Traced, attempt: u32) {
    hot!(to, message, attempt => tracing::trace!(
        target: DELIVERY,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        to = %to,
        attempt,
        "routing"
    ));
}

/// Exactly-once: a copy of a message already delivered inside the window.
#[inline(always)]
pub(crate) fn duplicate(to: &impl Display, message: &impl Traced) {
    hot!(to, message => tracing::trace!(
        target: DELIVERY,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        to = %to,
        "duplicate suppressed"
    ));
}

/// A push was not accepted, for `reason`.
#[inline(always)]
pub(crate) fn refused(to: &impl Display, message: &impl Traced, attempt: u32, reason: &str) {
    traced!(to, message, attempt, reason => tracing::debug!(
        target: DELIVERY,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        to = %to,
        attempt,
        reason,
        "refused"
    ));
}

/// Attempt `attempt` of `message` will be made after `delay`.
#[inline(always)]
pub(crate) fn retry_scheduled(
    to: &impl Display,
    message: &impl Traced,
    attempt: u32,
    delay: Duration,
) {
    traced!(to, message, attempt, delay => tracing::debug!(
        target: DELIVERY,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        to = %to,
        attempt,
        delay = ?delay,
        "retry scheduled"
    ));
}

/// No ack arrived in time: attempt `attempt` redelivers `message` (exactly-once
/// counts the attempt but suppresses the copy, which the mailbox already had).
#[inline(always)]
pub(crate) fn redelivery(
    to: &impl Display,
    message: &impl Traced,
    attempt: u32,
    copy_suppressed: bool,
) {
    traced!(to, message, attempt, copy_suppressed => tracing::info!(
        target: DELIVERY,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        to = %to,
        attempt,
        copy_suppressed,
        "redelivering after a missing ack"
    ));
}

/// A tracked message was acknowledged.
#[inline(always)]
pub(crate) fn acknowledged(id: &impl Display) {
    hot!(id => tracing::trace!(target: DELIVERY, message_id = %id, "acknowledged"));
}

// ===== router =====

/// A group picked `member` for `message`.
#[inline(always)]
pub(crate) fn group_pick(group: &impl Display, member: &impl Display, message: &impl Traced) {
    hot!(group, member, message => tracing::trace!(
        target: ROUTER,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        group = %group,
        member = %member,
        "group member picked"
    ));
}

// ===== breaker =====

/// `to`'s breaker opened (`trips`: consecutive openings without a close).
#[inline(always)]
pub(crate) fn breaker_opened(to: &impl Display, trips: u32) {
    traced!(to, trips => tracing::warn!(target: BREAKER, to = %to, trips, "circuit breaker opened"));
}

/// `to`'s breaker let one probe through.
#[inline(always)]
pub(crate) fn breaker_half_open(to: &impl Display) {
    traced!(to => tracing::info!(target: BREAKER, to = %to, "circuit breaker half-open"));
}

/// `to`'s probe succeeded: its breaker closed.
#[inline(always)]
pub(crate) fn breaker_closed(to: &impl Display) {
    traced!(to => tracing::info!(target: BREAKER, to = %to, "circuit breaker closed"));
}

// ===== dead letters =====

/// `message` to `to` was given up on.
#[inline(always)]
pub(crate) fn dead_letter(
    to: &impl Display,
    message: &impl Traced,
    reason: &impl Display,
    attempts: u32,
) {
    traced!(to, message, reason, attempts => tracing::warn!(
        target: DEAD_LETTER,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        to = %to,
        reason = %reason,
        attempts,
        "dead letter"
    ));
}

// ===== cluster (cargo feature `nats`) =====

/// This system joined the cluster as `node`.
#[cfg(feature = "nats")]
#[inline(always)]
pub(crate) fn node_joined(node: &str, url: &str, durable: bool, took_over: bool) {
    traced!(node, url, durable, took_over => tracing::info!(
        target: CLUSTER, node, url, durable, took_over, "cluster node joined"
    ));
}

/// This system left the cluster.
#[cfg(feature = "nats")]
#[inline(always)]
pub(crate) fn node_left(node: &str, durable: bool) {
    traced!(node, durable => tracing::info!(target: CLUSTER, node, durable, "cluster node left"));
}

/// A node without persistence whose lease lapsed had its `pids` entries deleted.
#[cfg(feature = "nats")]
#[inline(always)]
pub(crate) fn lapsed_node_removed(node: &str, pids: usize) {
    traced!(node, pids => tracing::info!(target: CLUSTER, node, pids, "lapsed node removed"));
}

/// A frame arrived from `from_node` (its `delivery`-th delivery by the stream).
#[cfg(feature = "nats")]
#[inline(always)]
pub(crate) fn frame_received(
    to: &impl Display,
    message: &impl Traced,
    from_node: &str,
    delivery: u32,
) {
    hot!(to, message, from_node, delivery => tracing::trace!(
        target: CLUSTER,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        to = %to,
        from_node,
        delivery,
        "frame received"
    ));
}

/// The stream did not acknowledge a publish: attempt `attempt` follows after `delay`.
#[cfg(feature = "nats")]
#[inline(always)]
pub(crate) fn publish_retry(
    to: &impl Display,
    message: &impl Traced,
    attempt: u32,
    delay: Duration,
    error: &str,
) {
    traced!(to, message, attempt, delay, error => tracing::debug!(
        target: CLUSTER,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        to = %to,
        attempt,
        delay = ?delay,
        error,
        "publish retry scheduled"
    ));
}

/// An arrived message goes back to the stream for a redelivery after `delay`.
#[cfg(feature = "nats")]
#[inline(always)]
pub(crate) fn redelivery_requested(
    to: &impl Display,
    message: &impl Traced,
    delivery: u32,
    delay: Duration,
    reason: &str,
) {
    traced!(to, message, delivery, delay, reason => tracing::debug!(
        target: CLUSTER,
        message_id = %IdText(message.message_id()),
        message_type = message.message_type(),
        to = %to,
        delivery,
        delay = ?delay,
        reason,
        "redelivery requested"
    ));
}

/// An exactly-once message arrived again within the window (not delivered again).
#[cfg(feature = "nats")]
#[inline(always)]
pub(crate) fn duplicate_arrival(to: &impl Display, id: &impl Display) {
    traced!(to, id => tracing::debug!(
        target: CLUSTER, message_id = %id, to = %to, "duplicate arrival"
    ));
}
