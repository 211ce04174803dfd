//! `MessagingError`, its categories, and the errors that hand a message back.

use std::fmt;

use crate::message::{AgentMessage, AgentPid, MessageId};

/// The result of a messaging operation.
pub type MessagingResult<T> = Result<T, MessagingError>;

/// What went wrong.
///
/// Every variant answers [`category`](MessagingError::category) (for monitoring) and
/// [`is_recoverable`](MessagingError::is_recoverable) (whether trying again later can
/// succeed). New variants may be added.
#[derive(Debug)]
#[non_exhaustive]
pub enum MessagingError {
    /// No agent or group is registered under this pid.
    AgentNotFound(AgentPid),
    /// Delivery failed for the given reason.
    DeliveryFailed(AgentPid, String),
    /// No reply (or no message) arrived in time.
    MessageTimeout(AgentPid),
    /// The bounded mailbox is full.
    MailboxFull(AgentPid),
    /// The message is malformed.
    InvalidMessage(String),
    /// (De)serialisation failed.
    Serialization(serde_json::Error),
    /// The mailbox is closed: the agent was unregistered or the system shut down.
    ChannelClosed(AgentPid),
    /// The system has no router.
    RouterNotInitialized,
    /// An agent with this pid is already registered.
    DuplicateAgent(AgentPid),
    /// An internal failure.
    System(String),
    /// A configuration value was refused.
    Configuration(String),
    /// The destination's circuit breaker is open; try again after its reset timeout.
    CircuitOpen(AgentPid),
    /// Another receiver is already receiving from this mailbox (one receiver at a time).
    ReceiverBusy(AgentPid),
    /// The group has no members.
    EmptyGroup(AgentPid),
    /// No message with this id is being tracked.
    UnknownMessage(MessageId),
    /// A tracking limit was reached (`max_concurrent_deliveries`, `max_delivery_records`).
    Overloaded(String),
    /// The name is already registered to an agent (`register_name`).
    NameTaken(String),
    /// No agent is registered under this name (`send_named`, `call_named`).
    UnknownName(String),
}

/// Error categories for monitoring and alerting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCategory {
    /// Unknown agent, group or message.
    NotFound,
    /// Delivery failed.
    Delivery,
    /// Timed out.
    Timeout,
    /// A capacity limit was hit.
    ResourceLimit,
    /// Bad input.
    Validation,
    /// (De)serialisation.
    Serialization,
    /// The channel is closed.
    Connection,
    /// Bad configuration.
    Configuration,
    /// Internal.
    System,
}

impl MessagingError {
    /// Whether retrying later can succeed.
    pub fn is_recoverable(&self) -> bool {
        matches!(
            self,
            MessagingError::DeliveryFailed(..)
                | MessagingError::MessageTimeout(_)
                | MessagingError::MailboxFull(_)
                | MessagingError::CircuitOpen(_)
                | MessagingError::ReceiverBusy(_)
                | MessagingError::EmptyGroup(_)
                | MessagingError::Overloaded(_)
                | MessagingError::NameTaken(_)
                | MessagingError::UnknownName(_)
        )
    }

    /// The category, for monitoring and alerting.
    pub fn category(&self) -> ErrorCategory {
        match self {
            MessagingError::AgentNotFound(_)
            | MessagingError::EmptyGroup(_)
            | MessagingError::UnknownMessage(_)
            | MessagingError::UnknownName(_) => ErrorCategory::NotFound,
            MessagingError::DeliveryFailed(..) | MessagingError::CircuitOpen(_) => {
                ErrorCategory::Delivery
            }
            MessagingError::MessageTimeout(_) => ErrorCategory::Timeout,
            MessagingError::MailboxFull(_) | MessagingError::Overloaded(_) => {
                ErrorCategory::ResourceLimit
            }
            MessagingError::InvalidMessage(_) | MessagingError::ReceiverBusy(_) => {
                ErrorCategory::Validation
            }
            MessagingError::Serialization(_) => ErrorCategory::Serialization,
            MessagingError::ChannelClosed(_) => ErrorCategory::Connection,
            MessagingError::RouterNotInitialized
            | MessagingError::DuplicateAgent(_)
            | MessagingError::Configuration(_)
            | MessagingError::NameTaken(_) => ErrorCategory::Configuration,
            MessagingError::System(_) => ErrorCategory::System,
        }
    }
}

impl fmt::Display for MessagingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MessagingError::AgentNotFound(pid) => write!(f, "Agent {pid} not found"),
            MessagingError::DeliveryFailed(pid, why) => {
                write!(f, "Message delivery failed to agent {pid}: {why}")
            }
            MessagingError::MessageTimeout(pid) => {
                write!(f, "Message timeout waiting for response from agent {pid}")
            }
            MessagingError::MailboxFull(pid) => write!(f, "Mailbox full for agent {pid}"),
            MessagingError::InvalidMessage(why) => write!(f, "Invalid message format: {why}"),
            MessagingError::Serialization(e) => write!(f, "Serialization error: {e}"),
            MessagingError::ChannelClosed(pid) => write!(f, "Channel closed for agent {pid}"),
            MessagingError::RouterNotInitialized => f.write_str("Router not initialized"),
            MessagingError::DuplicateAgent(pid) => {
                write!(f, "Duplicate agent registration: {pid}")
            }
            MessagingError::System(why) => write!(f, "System error: {why}"),
            MessagingError::Configuration(why) => write!(f, "Configuration error: {why}"),
            MessagingError::CircuitOpen(pid) => write!(f, "Circuit open for agent {pid}"),
            MessagingError::ReceiverBusy(pid) => {
                write!(f, "Another receiver is already receiving for agent {pid}")
            }
            MessagingError::EmptyGroup(pid) => write!(f, "Group {pid} has no members"),
            MessagingError::UnknownMessage(id) => write!(f, "Message {id} is not tracked"),
            MessagingError::Overloaded(why) => write!(f, "Overloaded: {why}"),
            MessagingError::NameTaken(name) => write!(f, "Name {name:?} is already registered"),
            MessagingError::UnknownName(name) => write!(f, "No agent is registered as {name:?}"),
        }
    }
}

impl std::error::Error for MessagingError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MessagingError::Serialization(e) => Some(e),
            _ => None,
        }
    }
}

impl From<serde_json::Error> for MessagingError {
    fn from(e: serde_json::Error) -> Self {
        MessagingError::Serialization(e)
    }
}

/// A send that was refused, with the message handed back.
///
/// Its `Debug` does not require anything of the message.
pub enum TrySendError {
    /// The bounded mailbox is full.
    Full(AgentMessage),
    /// The mailbox is closed.
    Closed(AgentMessage),
}

impl TrySendError {
    /// The refused message.
    pub fn into_inner(self) -> AgentMessage {
        match self {
            TrySendError::Full(m) | TrySendError::Closed(m) => m,
        }
    }

    /// The error as a [`MessagingError`] for `pid` (dropping the message).
    pub fn into_error(self, pid: &AgentPid) -> MessagingError {
        self.to_error(pid)
    }

    /// The matching [`MessagingError`], keeping the message.
    pub(crate) fn to_error(&self, pid: &AgentPid) -> MessagingError {
        match self {
            TrySendError::Full(_) => MessagingError::MailboxFull(pid.clone()),
            TrySendError::Closed(_) => MessagingError::ChannelClosed(pid.clone()),
        }
    }
}

impl fmt::Debug for TrySendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Closed(_) => f.write_str("Closed(..)"),
        }
    }
}

impl fmt::Display for TrySendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("mailbox full"),
            TrySendError::Closed(_) => f.write_str("mailbox closed"),
        }
    }
}

impl std::error::Error for TrySendError {}

/// A send that waited for room (`send_timeout`) and gave up, with the message handed
/// back: `error` says why (`MailboxFull` after the timeout, `ChannelClosed`,
/// `AgentNotFound`).
///
/// Its `Debug` does not require anything of the message.
pub struct SendTimeoutError {
    /// Why the message was not queued.
    pub error: MessagingError,
    /// The message, untouched.
    pub message: AgentMessage,
}

impl SendTimeoutError {
    /// The refused message.
    pub fn into_inner(self) -> AgentMessage {
        self.message
    }
}

impl fmt::Debug for SendTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendTimeoutError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for SendTimeoutError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for SendTimeoutError {}

impl From<SendTimeoutError> for MessagingError {
    fn from(e: SendTimeoutError) -> Self {
        e.error
    }
}
