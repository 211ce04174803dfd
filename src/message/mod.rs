//! Messages: who sends, what is sent, and how urgently.
//!
//! Following Erlang/OTP, an [`AgentMessage`] is a `Call` (gen_server:call, expects a
//! reply), a `Cast` (gen_server:cast, fire and forget) or an `Info` (a system notice),
//! plus `Reply` and `Ack`. A [`MessageEnvelope`] is the routable, serialisable form that
//! `MessageSystem::send_message` takes; it arrives as a `Cast` carrying the envelope's id,
//! sender, type and JSON payload.

mod envelope;
mod id;
mod payload;
pub(crate) mod reply;

use std::any::Any;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use self::envelope::{MessageEnvelope, TypedMessage};
pub use self::id::{AgentPid, MessageId, SupervisorId};
pub use self::payload::Payload;
pub use self::reply::{reply_channel, ReplyError, ReplyReceiver, ReplySender};

/// How urgently a message is delivered: a mailbox hands out `Critical` before `High`
/// before `Normal` before `Low`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
pub enum MessagePriority {
    /// Background work.
    Low = 0,
    /// The default.
    #[default]
    Normal = 1,
    /// Ahead of normal traffic.
    High = 2,
    /// Ahead of everything.
    Critical = 3,
}

impl MessagePriority {
    /// All priorities, highest first (the order a mailbox drains them).
    pub const HIGHEST_FIRST: [MessagePriority; 4] = [
        MessagePriority::Critical,
        MessagePriority::High,
        MessagePriority::Normal,
        MessagePriority::Low,
    ];

    /// The lane index of this priority (`Low` = 0 … `Critical` = 3).
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// Per-message delivery options.
///
/// `max_retries` and `retry_delay` here override the system's `DeliveryConfig` for this
/// message; `timeout` is how long the message may stay undelivered before it expires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOptions {
    /// Which mailbox lane the message goes to.
    pub priority: MessagePriority,
    /// How long the message may wait for delivery before it expires (dead letter).
    pub timeout: Duration,
    /// Keep the message until `MessageSystem::acknowledge` is called for its id.
    pub require_ack: bool,
    /// Maximum redelivery attempts after the first.
    pub max_retries: u32,
    /// Delay before the first retry.
    pub retry_delay: Duration,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        Self {
            priority: MessagePriority::Normal,
            timeout: Duration::from_secs(30),
            require_ack: false,
            max_retries: 3,
            retry_delay: Duration::from_millis(100),
        }
    }
}

/// A message in an agent's mailbox.
///
/// A call's, cast's or reply's value is a [`Payload`]: stored in the message itself when
/// it is small (up to three words: a number, a pid, a `String`), so such a message
/// costs no allocation, and boxed otherwise. It answers the seed's `downcast`
/// (a `Box<T>`, allocated for a small value) and `downcast_ref`; [`Payload::take`]
/// moves the value out without allocating.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use terraphim_agent_messaging::{AgentMessage, AgentPid, Payload};
///
/// let from = AgentPid::new();
/// let cast = AgentMessage::cast(from.clone(), "hello");
/// assert_eq!(cast.payload::<&str>(), Some(&"hello"));
/// assert!(!cast.expects_response());
///
/// let (call, reply) = AgentMessage::call(from, 21u32, Duration::from_secs(1));
/// if let AgentMessage::Call { payload, reply_to, .. } = call {
///     let n = payload.downcast::<u32>().unwrap();
///     reply_to.send(Box::new(*n * 2)).unwrap();
/// }
/// assert_eq!(*reply.recv().unwrap().downcast::<u32>().unwrap(), 42);
///
/// // The same with both values inline: no box for the request or the reply.
/// let (call, reply) = AgentMessage::call(AgentPid::nil(), 21u32, Duration::from_secs(1));
/// if let AgentMessage::Call { payload, reply_to, .. } = call {
///     let n: u32 = payload.take().unwrap();
///     reply_to.send(Payload::new(n * 2)).unwrap();
/// }
/// assert_eq!(reply.recv().unwrap().take::<u32>().unwrap(), 42);
/// ```
pub enum AgentMessage {
    /// gen_server:call — the callee answers through `reply_to`.
    Call {
        /// The message's id.
        id: MessageId,
        /// The caller.
        from: AgentPid,
        /// The request.
        payload: Payload,
        /// Where the reply goes: `reply_to.send(Box::new(reply))`, or
        /// `reply_to.send(Payload::new(reply))` (no allocation for a small reply).
        reply_to: ReplySender,
        /// How long the caller waits.
        timeout: Duration,
    },
    /// gen_server:cast — fire and forget.
    Cast {
        /// The message's id (an envelope's id when routed from one).
        id: MessageId,
        /// The sender ([`AgentPid::nil`] when the envelope had none).
        from: AgentPid,
        /// The payload (`serde_json::Value` when routed from an envelope).
        payload: Payload,
        /// The envelope's `message_type`, if routed from one.
        message_type: Option<String>,
    },
    /// A system notice (gen_server:info).
    Info {
        /// The message's id.
        id: MessageId,
        /// What happened.
        info: SystemInfo,
    },
    /// A reply sent as an ordinary message.
    Reply {
        /// The message's id.
        id: MessageId,
        /// Whom it answers.
        to: AgentPid,
        /// The reply.
        payload: Payload,
    },
    /// An acknowledgement of another message.
    Ack {
        /// The message's id.
        id: MessageId,
        /// The id being acknowledged.
        original_message_id: MessageId,
    },
}

impl AgentMessage {
    /// A call and the receiver of its reply.
    pub fn call<T: Any + Send>(
        from: AgentPid,
        payload: T,
        timeout: Duration,
    ) -> (Self, ReplyReceiver) {
        let (reply_to, reply) = reply_channel();
        let message = AgentMessage::Call {
            id: MessageId::new(),
            from,
            payload: Payload::new(payload),
            reply_to,
            timeout,
        };
        (message, reply)
    }

    /// A cast.
    pub fn cast<T: Any + Send>(from: AgentPid, payload: T) -> Self {
        AgentMessage::Cast {
            id: MessageId::new(),
            from,
            payload: Payload::new(payload),
            message_type: None,
        }
    }

    /// A system notice.
    pub fn info(info: SystemInfo) -> Self {
        AgentMessage::Info {
            id: MessageId::new(),
            info,
        }
    }

    /// A reply message addressed to `to`.
    pub fn reply<T: Any + Send>(to: AgentPid, payload: T) -> Self {
        AgentMessage::Reply {
            id: MessageId::new(),
            to,
            payload: Payload::new(payload),
        }
    }

    /// An acknowledgement of `original_message_id`.
    pub fn ack(original_message_id: MessageId) -> Self {
        AgentMessage::Ack {
            id: MessageId::new(),
            original_message_id,
        }
    }

    /// The message's id.
    pub fn id(&self) -> &MessageId {
        match self {
            AgentMessage::Call { id, .. }
            | AgentMessage::Cast { id, .. }
            | AgentMessage::Info { id, .. }
            | AgentMessage::Reply { id, .. }
            | AgentMessage::Ack { id, .. } => id,
        }
    }

    /// The sender, for calls and casts that have one.
    ///
    /// A cast routed from an envelope without [`with_from`](MessageEnvelope::with_from)
    /// has none: `None` here, the nil pid in its `from` field. (1.x made up a fresh
    /// pid instead; code that wants that writes `from().cloned().unwrap_or_default()`.)
    pub fn from(&self) -> Option<&AgentPid> {
        match self {
            AgentMessage::Call { from, .. } | AgentMessage::Cast { from, .. } if !from.is_nil() => {
                Some(from)
            }
            _ => None,
        }
    }

    /// Whether the sender waits for a reply.
    pub fn expects_response(&self) -> bool {
        matches!(self, AgentMessage::Call { .. })
    }

    /// The envelope's `message_type`, for messages routed from an envelope.
    pub fn message_type(&self) -> Option<&str> {
        match self {
            AgentMessage::Cast { message_type, .. } => message_type.as_deref(),
            _ => None,
        }
    }

    /// The payload as a `T`, for `Call`, `Cast` and `Reply`.
    pub fn payload<T: Any>(&self) -> Option<&T> {
        match self {
            AgentMessage::Call { payload, .. }
            | AgentMessage::Cast { payload, .. }
            | AgentMessage::Reply { payload, .. } => payload.downcast_ref::<T>(),
            _ => None,
        }
    }

    /// A call that is given up on (dead-lettered) can never be answered by its callee:
    /// its reply sender is swapped for a closed one, so that the caller fails at once
    /// (`DeliveryFailed`) instead of waiting out its timeout. The message stays whole;
    /// a reply sent to the stand-in is handed back. Other messages pass unchanged.
    pub(crate) fn disarm(mut self) -> Self {
        if let AgentMessage::Call { reply_to, .. } = &mut self {
            let (closed, _receiver_gone) = reply_channel();
            drop(std::mem::replace(reply_to, closed));
        }
        self
    }

    /// A copy with a fresh id, for a broadcast; `None` for a `Call` (one caller waits
    /// for one reply) and for a payload of a type [`clone_payload`] does not know.
    pub(crate) fn try_clone(&self) -> Option<AgentMessage> {
        let id = MessageId::new();
        Some(match self {
            AgentMessage::Call { .. } => return None,
            AgentMessage::Cast {
                from,
                payload,
                message_type,
                ..
            } => AgentMessage::Cast {
                id,
                from: from.clone(),
                payload: clone_payload(payload)?,
                message_type: message_type.clone(),
            },
            AgentMessage::Info { info, .. } => AgentMessage::Info {
                id,
                info: info.clone(),
            },
            AgentMessage::Reply { to, payload, .. } => AgentMessage::Reply {
                id,
                to: to.clone(),
                payload: clone_payload(payload)?,
            },
            AgentMessage::Ack {
                original_message_id,
                ..
            } => AgentMessage::Ack {
                id,
                original_message_id: original_message_id.clone(),
            },
        })
    }

    /// The variant's name, for logs and dead letters.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentMessage::Call { .. } => "call",
            AgentMessage::Cast { .. } => "cast",
            AgentMessage::Info { .. } => "info",
            AgentMessage::Reply { .. } => "reply",
            AgentMessage::Ack { .. } => "ack",
        }
    }
}

impl fmt::Debug for AgentMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct(match self {
            AgentMessage::Call { .. } => "Call",
            AgentMessage::Cast { .. } => "Cast",
            AgentMessage::Info { .. } => "Info",
            AgentMessage::Reply { .. } => "Reply",
            AgentMessage::Ack { .. } => "Ack",
        });
        d.field("id", self.id());
        if let Some(from) = self.from() {
            d.field("from", from);
        }
        match self {
            AgentMessage::Cast {
                payload,
                message_type,
                ..
            } => {
                if let Some(t) = message_type {
                    d.field("message_type", t);
                }
                d.field("payload", &DebugPayload(payload));
            }
            AgentMessage::Call {
                payload, timeout, ..
            } => {
                d.field("payload", &DebugPayload(payload))
                    .field("timeout", timeout);
            }
            AgentMessage::Reply { to, payload, .. } => {
                d.field("to", to).field("payload", &DebugPayload(payload));
            }
            AgentMessage::Info { info, .. } => {
                d.field("info", info);
            }
            AgentMessage::Ack {
                original_message_id,
                ..
            } => {
                d.field("original_message_id", original_message_id);
            }
        }
        d.finish()
    }
}

/// A copy of a payload of one of the types a broadcast can copy: `serde_json::Value`
/// (every envelope), `String`, `&'static str`, `Vec<u8>`, `bool`, `()`, the integer
/// types and `f32`/`f64`. A payload holds a `dyn Any`, which has no `clone`; other
/// types are refused (wrap them in JSON, or send one message per member).
pub(crate) fn clone_payload(payload: &Payload) -> Option<Payload> {
    macro_rules! try_types {
        ($($t:ty),*) => {$(
            if let Some(v) = payload.downcast_ref::<$t>() {
                return Some(Payload::new(v.clone()));
            }
        )*};
    }
    try_types!(
        serde_json::Value,
        String,
        &'static str,
        Vec<u8>,
        bool,
        (),
        u8,
        u16,
        u32,
        u64,
        u128,
        usize,
        i8,
        i16,
        i32,
        i64,
        i128,
        isize,
        f32,
        f64
    );
    None
}

/// Shows common payload types by value and anything else as `<opaque>`.
struct DebugPayload<'a>(&'a Payload);

impl fmt::Debug for DebugPayload<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.0;
        if let Some(v) = p.downcast_ref::<serde_json::Value>() {
            write!(f, "{v}")
        } else if let Some(s) = p.downcast_ref::<&str>() {
            write!(f, "{s:?}")
        } else if let Some(s) = p.downcast_ref::<String>() {
            write!(f, "{s:?}")
        } else if let Some(n) = p.downcast_ref::<u64>() {
            write!(f, "{n}")
        } else if let Some(n) = p.downcast_ref::<i64>() {
            write!(f, "{n}")
        } else if let Some(n) = p.downcast_ref::<u32>() {
            write!(f, "{n}")
        } else if let Some(n) = p.downcast_ref::<i32>() {
            write!(f, "{n}")
        } else {
            f.write_str("<opaque>")
        }
    }
}

/// System notices, delivered as [`AgentMessage::Info`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SystemInfo {
    /// An agent started.
    AgentStarted {
        /// The agent.
        agent_id: AgentPid,
        /// When.
        timestamp: DateTime<Utc>,
    },
    /// An agent stopped.
    AgentStopped {
        /// The agent.
        agent_id: AgentPid,
        /// When.
        timestamp: DateTime<Utc>,
        /// Why.
        reason: String,
    },
    /// A health probe.
    HealthCheck {
        /// The agent probed.
        agent_id: AgentPid,
        /// When.
        timestamp: DateTime<Utc>,
    },
    /// The system is shutting down.
    SystemShutdown {
        /// When.
        timestamp: DateTime<Utc>,
        /// Why.
        reason: String,
    },
    /// Anything else.
    Custom {
        /// What kind of notice.
        message_type: String,
        /// Its data.
        data: serde_json::Value,
        /// When.
        timestamp: DateTime<Utc>,
    },
}

/// A message on its way through the delivery engine: a routed envelope (kept whole, so
/// that it can be redelivered or handed to a router that takes envelopes) or a built
/// message.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Envelope(MessageEnvelope),
    Message(AgentMessage),
}

impl Outgoing {
    /// A copy addressed to `member` with a fresh id, for a broadcast; `None` if the
    /// message cannot be copied (see [`AgentMessage::try_clone`]).
    pub(crate) fn copy_for(&self, member: &AgentPid) -> Option<Outgoing> {
        match self {
            Outgoing::Envelope(e) => {
                let mut copy = e.clone();
                copy.id = MessageId::new();
                copy.to = member.clone();
                Some(Outgoing::Envelope(copy))
            }
            Outgoing::Message(m) => m.try_clone().map(Outgoing::Message),
        }
    }

    pub(crate) fn id(&self) -> &MessageId {
        match self {
            Outgoing::Envelope(e) => &e.id,
            Outgoing::Message(m) => m.id(),
        }
    }
}

// ===== what the events say about a message =====

impl crate::observe::Traced for AgentMessage {
    fn message_id(&self) -> u128 {
        self.id().0.as_u128()
    }

    fn message_type(&self) -> &str {
        AgentMessage::message_type(self).unwrap_or(self.kind())
    }
}

impl crate::observe::Traced for Outgoing {
    fn message_id(&self) -> u128 {
        self.id().0.as_u128()
    }

    fn message_type(&self) -> &str {
        match self {
            Outgoing::Envelope(e) => &e.message_type,
            Outgoing::Message(m) => crate::observe::Traced::message_type(m),
        }
    }
}
