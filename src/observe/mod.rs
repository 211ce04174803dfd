//! Observability: what a running system tells the outside, through the `tracing` and
//! `metrics` facades (cargo features of the same names, both off by default).
//!
//! 1. `events`: `tracing` spans and events, one function per event, each with the
//!    target of the module the event is about and its data as fields.
//! 2. `meters`: `metrics` counters, gauges and histograms; the names, and how a
//!    system's numbers reach the recorder.
//!
//! The rest of the crate calls these functions and nothing of `tracing` or `metrics`
//! directly, so every event and metric is defined here, once. Without the features
//! every function is an empty `#[inline(always)]` body and every type a zero-sized
//! one: a build without them compiles nothing of either crate and pays nothing.
//!
//! With a feature compiled in and nobody listening (no subscriber, no recorder), a send
//! costs one relaxed load (`tracing`'s global level filter, per event site) and a call
//! three such loads and a striped counter (plus two clock reads one call in eight);
//! everything else runs off those paths.
//!
//! # Invariants
//!
//! - No event on a per-message path (each send, each call) is above `TRACE`; what is
//!   logged at `DEBUG` and above happens once per registration, refusal, retry, dead
//!   letter, breaker transition or shutdown.
//! - Arguments are borrowed and fields are evaluated only when an event is enabled:
//!   an event that nobody listens to formats nothing.
//! - No metric has a per-message label value (pid, message id): labels take a fixed
//!   set of values, except the agent names a user asks depth gauges for.

pub(crate) mod events;
// Without the feature the metric names and the snapshot are unused.
#[cfg_attr(not(feature = "metrics"), allow(dead_code))]
pub(crate) mod meters;

use std::fmt;

/// A message id's bits, displayed as its UUID (`8-4-4-4-12` lowercase hex).
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct IdText(pub(crate) u128);

impl fmt::Display for IdText {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            b >> 96,
            (b >> 80) & 0xffff,
            (b >> 64) & 0xffff,
            (b >> 48) & 0xffff,
            b & 0xffff_ffff_ffff
        )
    }
}

/// What the events say about a message: its id and its type. Implemented by the
/// message types (this layer sits below them).
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) trait Traced {
    /// The message's id as its 128 bits, which [`IdText`] displays as the UUID. A value,
    /// not a reference into the message: an event on the send path reads it before the
    /// message moves on, and a reference handed to the (opaque) event would make the
    /// compiler copy the whole message before every move, traced or not (29
    /// instructions per cast, callgrind, peer suite `cast-by-pid-ours`).
    fn message_id(&self) -> u128;

    /// An envelope's `message_type`, or else the kind of message (`call`, `cast`, …).
    fn message_type(&self) -> &str;
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::IdText;

    #[test]
    fn an_id_displays_as_its_uuid() {
        for bits in [0, 1, u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            let uuid = uuid::Uuid::from_u128(bits);
            assert_eq!(IdText(bits).to_string(), uuid.to_string());
        }
    }
}
