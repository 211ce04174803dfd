//! `MessageEnvelope`: the routable, serialisable form of a cast, and `TypedMessage<T>`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{AgentMessage, AgentPid, DeliveryOptions, MessageId, Payload};

/// A message addressed to an agent (or a group), with its delivery options.
///
/// `MessageSystem::send_message` routes it; the receiver gets an
/// [`AgentMessage::Cast`] whose `id()`, `from()`, `message_type()` and
/// `payload::<serde_json::Value>()` are the envelope's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageEnvelope {
    /// The message's id: kept through retries, used for acks and deduplication.
    pub id: MessageId,
    /// The sender, if any.
    pub from: Option<AgentPid>,
    /// The destination agent or group.
    pub to: AgentPid,
    /// An application-defined type tag.
    pub message_type: String,
    /// The payload.
    pub payload: serde_json::Value,
    /// Priority, expiry, acks and retries.
    pub delivery_options: DeliveryOptions,
    /// When the envelope was made.
    pub created_at: DateTime<Utc>,
    /// Delivery attempts so far.
    pub attempts: u32,
}

impl MessageEnvelope {
    /// A new envelope with a fresh id and no sender.
    pub fn new(
        to: AgentPid,
        message_type: String,
        payload: serde_json::Value,
        delivery_options: DeliveryOptions,
    ) -> Self {
        Self {
            id: MessageId::new(),
            from: None,
            to,
            message_type,
            payload,
            delivery_options,
            created_at: Utc::now(),
            attempts: 0,
        }
    }

    /// Sets the sender.
    pub fn with_from(mut self, from: AgentPid) -> Self {
        self.from = Some(from);
        self
    }

    /// Counts one more delivery attempt.
    pub fn increment_attempts(&mut self) {
        self.attempts = self.attempts.saturating_add(1);
    }

    /// Whether the attempts so far reached `delivery_options.max_retries`.
    pub fn max_retries_exceeded(&self) -> bool {
        self.attempts >= self.delivery_options.max_retries
    }

    /// Whether the envelope has expired at `now`: more than `delivery_options.timeout`
    /// has passed since `created_at`.
    ///
    /// The boundary is not expired: at `now = created_at + timeout` this is `false`, and
    /// it turns `true` just after. A `now` before `created_at` counts as no time passed.
    /// Passing the time in (as 1.x did) makes the boundary testable; for the wall clock
    /// use [`is_expired_now`](Self::is_expired_now).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use chrono::TimeDelta;
    /// use terraphim_agent_messaging::{AgentPid, DeliveryOptions, MessageEnvelope};
    ///
    /// let options = DeliveryOptions { timeout: Duration::from_secs(5), ..Default::default() };
    /// let envelope = MessageEnvelope::new(AgentPid::new(), "job".into(), serde_json::json!(1), options);
    /// let deadline = envelope.created_at + TimeDelta::seconds(5);
    /// assert!(!envelope.is_expired(deadline));
    /// assert!(envelope.is_expired(deadline + TimeDelta::nanoseconds(1)));
    /// ```
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        let waited = now
            .signed_duration_since(self.created_at)
            .to_std()
            .unwrap_or(Duration::ZERO);
        waited > self.delivery_options.timeout
    }

    /// [`is_expired`](Self::is_expired) at the wall clock's `Utc::now()`.
    pub fn is_expired_now(&self) -> bool {
        self.is_expired(Utc::now())
    }

    /// The cast this envelope arrives as, keeping its id, sender and type.
    pub fn into_message(self) -> AgentMessage {
        self.into_cast().0
    }
}

/// What an envelope keeps beside the cast it arrives as ([`MessageEnvelope::into_cast`]),
/// so that a cast refused by a mailbox goes back into its envelope, for a retry or a
/// dead letter, without the envelope ever being copied.
#[derive(Debug)]
pub(crate) struct EnvelopeRest {
    to: AgentPid,
    delivery_options: DeliveryOptions,
    created_at: DateTime<Utc>,
    attempts: u32,
}

impl MessageEnvelope {
    /// [`into_message`](Self::into_message), keeping the rest.
    #[inline]
    pub(crate) fn into_cast(self) -> (AgentMessage, EnvelopeRest) {
        let MessageEnvelope {
            id,
            from,
            to,
            message_type,
            payload,
            delivery_options,
            created_at,
            attempts,
        } = self;
        let cast = AgentMessage::Cast {
            id,
            from: from.unwrap_or_else(AgentPid::nil),
            payload: Payload::new(payload),
            message_type: Some(message_type),
        };
        let rest = EnvelopeRest {
            to,
            delivery_options,
            created_at,
            attempts,
        };
        (cast, rest)
    }

    /// The envelope a cast from [`into_cast`](Self::into_cast) came from; any other
    /// message is handed back.
    pub(crate) fn from_cast(
        message: AgentMessage,
        rest: EnvelopeRest,
    ) -> Result<Self, AgentMessage> {
        match message {
            AgentMessage::Cast {
                id,
                from,
                payload,
                message_type: Some(message_type),
            } => match payload.take::<serde_json::Value>() {
                Ok(payload) => Ok(MessageEnvelope {
                    id,
                    from: (!from.is_nil()).then_some(from),
                    to: rest.to,
                    message_type,
                    payload,
                    delivery_options: rest.delivery_options,
                    created_at: rest.created_at,
                    attempts: rest.attempts,
                }),
                Err(payload) => Err(AgentMessage::Cast {
                    id,
                    from,
                    payload,
                    message_type: Some(message_type),
                }),
            },
            other => Err(other),
        }
    }
}

/// A payload of a known type with its id and sender, for type-safe handlers.
#[derive(Debug, Clone, PartialEq)]
pub struct TypedMessage<T> {
    /// The message's id.
    pub id: MessageId,
    /// The sender, if any.
    pub from: Option<AgentPid>,
    /// The payload.
    pub payload: T,
    /// When it was made.
    pub created_at: DateTime<Utc>,
}

impl<T> TypedMessage<T> {
    /// A new message with a fresh id.
    pub fn new(payload: T) -> Self {
        Self {
            id: MessageId::new(),
            from: None,
            payload,
            created_at: Utc::now(),
        }
    }

    /// Sets the sender.
    pub fn with_from(mut self, from: AgentPid) -> Self {
        self.from = Some(from);
        self
    }
}

impl<T: std::any::Any + Send> TypedMessage<T> {
    /// The cast carrying this payload, keeping the id and sender.
    pub fn into_message(self) -> AgentMessage {
        AgentMessage::Cast {
            id: self.id,
            from: self.from.unwrap_or_else(AgentPid::nil),
            payload: Payload::new(self.payload),
            message_type: None,
        }
    }
}
