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

/// What the events say about a message: its id and its type. Implemented by the
/// message types (this layer sits below them).
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) trait Traced {
    /// The message's id, as it displays (a UUID).
    fn message_id(&self) -> &dyn fmt::Display;

    /// An envelope's `message_type`, or else the kind of message (`call`, `cast`, …).
    fn message_type(&self) -> &str;
}
