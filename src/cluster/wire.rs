//! The wire format between nodes: one JSON frame per message, versioned.
//!
//! ```text
//! {"v":1,"to":"<pid>","priority":"Normal","from_node":"node-a","exactly_once":false,
//!  "body":{"kind":"envelope","envelope":{ ...MessageEnvelope... }}}
//! {"v":1, ..., "body":{"kind":"cast","id":"<id>","from":"<pid>"|null,"message_type":null,"payload":<json>}}
//! {"v":1, ..., "body":{"kind":"info","id":"<id>","info":{ ...SystemInfo... }}}
//! ```
//!
//! What crosses: envelopes (id, sender, type, JSON payload and delivery options kept),
//! casts whose payload is a `serde_json::Value`, and system notices. What does not: a
//! call (its reply slot is a pointer into the caller's process), a cast with a payload
//! of any other type, replies and acks; [`encode`] refuses them with a clear
//! error and the engine hands the message back (dead letter, `Err` to the sender).
//!
//! A frame that does not decode, or carries another `v`, is reported by [`decode`]
//! with the reason; the receiving node dead-letters it.
//!
//! A remote call travels as a request (core NATS request/reply) with its own frame,
//! [`CallFrame`] (the call's id, caller, JSON payload and timeout), and is answered
//! with a [`ReplyFrame`]: the callee's reply if it is a `serde_json::Value`, or why
//! there is none.

use serde::{Deserialize, Serialize};

use crate::error::MessagingError;
use crate::message::{
    AgentMessage, AgentPid, MessageEnvelope, MessageId, MessagePriority, Outgoing, Payload,
    SystemInfo,
};

/// The wire version this build writes and reads.
pub(crate) const WIRE_VERSION: u32 = 1;

/// One message on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Frame {
    /// [`WIRE_VERSION`].
    pub(crate) v: u32,
    /// The destination pid.
    pub(crate) to: AgentPid,
    /// The mailbox lane.
    pub(crate) priority: MessagePriority,
    /// The node that sent it (for dead letters and debugging).
    pub(crate) from_node: String,
    /// Sent exactly once: the receiving node keeps the id in its dedupe window.
    #[serde(default)]
    pub(crate) exactly_once: bool,
    pub(crate) body: Body,
}

/// What the frame carries.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Body {
    Envelope {
        envelope: MessageEnvelope,
    },
    Cast {
        id: MessageId,
        from: Option<AgentPid>,
        message_type: Option<String>,
        payload: serde_json::Value,
    },
    Info {
        id: MessageId,
        info: SystemInfo,
    },
}

/// A call on the wire (subject `{prefix}.call.{node}`, core request/reply).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct CallFrame {
    pub(crate) v: u32,
    pub(crate) to: AgentPid,
    pub(crate) from_node: String,
    pub(crate) id: MessageId,
    pub(crate) from: AgentPid,
    pub(crate) payload: serde_json::Value,
    /// The caller's timeout, in milliseconds.
    pub(crate) timeout_ms: u64,
}

/// The answer to a [`CallFrame`]: a reply, or why there is none.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReplyFrame {
    pub(crate) v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reply: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl ReplyFrame {
    pub(crate) fn reply(value: serde_json::Value) -> Self {
        ReplyFrame {
            v: WIRE_VERSION,
            reply: Some(value),
            error: None,
        }
    }

    pub(crate) fn error(why: impl Into<String>) -> Self {
        ReplyFrame {
            v: WIRE_VERSION,
            reply: None,
            error: Some(why.into()),
        }
    }

    /// The reply, or why there is none (an error frame, garbage, a foreign version).
    pub(crate) fn decode(bytes: &[u8]) -> Result<serde_json::Value, String> {
        match serde_json::from_slice::<ReplyFrame>(bytes) {
            Ok(frame) if frame.v != WIRE_VERSION => Err(foreign(frame.v)),
            Ok(ReplyFrame {
                reply: Some(value), ..
            }) => Ok(value),
            Ok(ReplyFrame { error, .. }) => Err(error.unwrap_or_else(|| "an empty reply".into())),
            Err(e) => Err(format!("undecodable reply ({} bytes): {e}", bytes.len())),
        }
    }
}

/// Decodes a call, or says why not.
pub(crate) fn decode_call(bytes: &[u8]) -> Result<CallFrame, String> {
    match serde_json::from_slice::<CallFrame>(bytes) {
        Ok(frame) if frame.v == WIRE_VERSION => Ok(frame),
        Ok(frame) => Err(foreign(frame.v)),
        Err(e) => match serde_json::from_slice::<VersionOnly>(bytes) {
            Ok(VersionOnly { v }) if v != WIRE_VERSION => Err(foreign(v)),
            _ => Err(format!("undecodable call ({} bytes): {e}", bytes.len())),
        },
    }
}

/// Only the version, to name a foreign frame's version when the whole does not decode.
#[derive(Deserialize)]
struct VersionOnly {
    v: u32,
}

/// Whether `out` can cross a process (what [`encode`] takes).
pub(crate) fn crosses(out: &Outgoing) -> bool {
    match out {
        Outgoing::Envelope(_) => true,
        Outgoing::Message(AgentMessage::Cast { payload, .. }) => {
            payload.downcast_ref::<serde_json::Value>().is_some()
        }
        Outgoing::Message(AgentMessage::Info { .. }) => true,
        Outgoing::Message(_) => false,
    }
}

/// The frame of `out` for `to` (`Err`: it cannot cross a process, or does not
/// serialise), and the message back either way.
pub(crate) fn encode(
    to: &AgentPid,
    out: Outgoing,
    priority: MessagePriority,
    from_node: &str,
    to_node: &str,
    exactly_once: bool,
) -> (Result<Vec<u8>, MessagingError>, Outgoing) {
    let refuse = |what: &str| {
        MessagingError::InvalidMessage(format!(
            "{what} cannot cross to agent {to} on node {to_node:?}: only envelopes, casts \
             with a serde_json::Value payload and system infos are sent between processes"
        ))
    };
    // Borrow to build the frame; the message itself stays here for the caller.
    let body = match &out {
        Outgoing::Envelope(envelope) => BodyRef::Envelope { envelope },
        Outgoing::Message(AgentMessage::Cast {
            id,
            from,
            payload,
            message_type,
        }) => match payload.downcast_ref::<serde_json::Value>() {
            Some(payload) => BodyRef::Cast {
                id,
                from: (!from.is_nil()).then_some(from),
                message_type: message_type.as_deref(),
                payload,
            },
            None => {
                return (
                    Err(refuse("a cast whose payload is not a serde_json::Value")),
                    out,
                )
            }
        },
        Outgoing::Message(AgentMessage::Info { id, info }) => BodyRef::Info { id, info },
        Outgoing::Message(message) => {
            return (Err(refuse(&format!("a {} message", message.kind()))), out)
        }
    };
    let frame = FrameRef {
        v: WIRE_VERSION,
        to,
        priority,
        from_node,
        exactly_once,
        body,
    };
    let bytes = serde_json::to_vec(&frame).map_err(MessagingError::Serialization);
    (bytes, out)
}

/// [`Frame`], borrowing (so that encoding copies nothing but into the buffer).
#[derive(Serialize)]
struct FrameRef<'a> {
    v: u32,
    to: &'a AgentPid,
    priority: MessagePriority,
    from_node: &'a str,
    exactly_once: bool,
    body: BodyRef<'a>,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum BodyRef<'a> {
    Envelope {
        envelope: &'a MessageEnvelope,
    },
    Cast {
        id: &'a MessageId,
        from: Option<&'a AgentPid>,
        message_type: Option<&'a str>,
        payload: &'a serde_json::Value,
    },
    Info {
        id: &'a MessageId,
        info: &'a SystemInfo,
    },
}

/// Decodes a frame, or says why not (garbage, or a foreign version).
pub(crate) fn decode(bytes: &[u8]) -> Result<Frame, String> {
    match serde_json::from_slice::<Frame>(bytes) {
        Ok(frame) if frame.v == WIRE_VERSION => Ok(frame),
        Ok(frame) => Err(foreign(frame.v)),
        Err(e) => match serde_json::from_slice::<VersionOnly>(bytes) {
            Ok(VersionOnly { v }) if v != WIRE_VERSION => Err(foreign(v)),
            _ => Err(format!("undecodable frame ({} bytes): {e}", bytes.len())),
        },
    }
}

fn foreign(v: u32) -> String {
    format!("frame of wire version {v}; this node reads version {WIRE_VERSION}")
}

impl Frame {
    /// The message as the local routes take it: an envelope stays an envelope (it
    /// arrives as its cast), a cast and an info are rebuilt.
    pub(crate) fn into_outgoing(self) -> Outgoing {
        match self.body {
            Body::Envelope { envelope } => Outgoing::Envelope(envelope),
            Body::Cast {
                id,
                from,
                message_type,
                payload,
            } => Outgoing::Message(AgentMessage::Cast {
                id,
                from: from.unwrap_or_else(AgentPid::nil),
                payload: Payload::new(payload),
                message_type,
            }),
            Body::Info { id, info } => Outgoing::Message(AgentMessage::Info { id, info }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::DeliveryOptions;
    use serde_json::json;

    #[test]
    fn an_envelope_round_trips() {
        let to = AgentPid::new();
        let from = AgentPid::new();
        let envelope = MessageEnvelope::new(
            to.clone(),
            "job".into(),
            json!({"n": 1}),
            DeliveryOptions::default(),
        )
        .with_from(from.clone());
        let id = envelope.id.clone();
        let (bytes, _) = encode(
            &to,
            Outgoing::Envelope(envelope),
            MessagePriority::High,
            "a",
            "b",
            false,
        );
        let frame = decode(&bytes.unwrap()).unwrap();
        assert_eq!(frame.priority, MessagePriority::High);
        let Outgoing::Envelope(back) = frame.into_outgoing() else {
            panic!("an envelope")
        };
        assert_eq!(
            (back.id, back.from, back.message_type.as_str()),
            (id, Some(from), "job")
        );
        assert_eq!(back.payload, json!({"n": 1}));
    }

    #[test]
    fn a_cast_needs_a_json_payload() {
        let to = AgentPid::new();
        let cast = AgentMessage::cast(AgentPid::new(), json!([1, 2]));
        let (bytes, _) = encode(
            &to,
            Outgoing::Message(cast),
            MessagePriority::Normal,
            "a",
            "b",
            false,
        );
        let back = decode(&bytes.unwrap()).unwrap().into_outgoing();
        let Outgoing::Message(back) = back else {
            panic!("a message")
        };
        assert_eq!(back.payload::<serde_json::Value>(), Some(&json!([1, 2])));

        let opaque = AgentMessage::cast(AgentPid::new(), 7u64);
        let (refused, back) = encode(
            &to,
            Outgoing::Message(opaque),
            MessagePriority::Normal,
            "a",
            "b",
            false,
        );
        let err = refused.unwrap_err();
        assert!(err.to_string().contains("serde_json::Value"), "{err}");
        let Outgoing::Message(back) = back else {
            panic!("handed back")
        };
        assert_eq!(back.payload::<u64>(), Some(&7));
    }

    #[test]
    fn garbage_and_foreign_versions_are_named() {
        assert!(decode(b"\x00\xffnot json")
            .unwrap_err()
            .contains("undecodable"));
        let foreign = br#"{"v":99,"to":"x","whatever":true}"#;
        assert!(decode(foreign).unwrap_err().contains("wire version 99"));
    }
}
