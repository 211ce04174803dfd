//! [`AgentMailbox`], [`MailboxSender`] and [`MailboxManager`]: async twins over the
//! core's lock-free mailboxes.
//!
//! Receiving uses the core's [`receive_async`](crate::AgentMailbox::receive_async)
//! future: a waiting receive registers the task's waker and never blocks a runtime
//! thread. Sending does not wait (a full mailbox refuses), so the async sends
//! complete in their first poll; `send_timeout` is the one send that waits for room
//! (back-pressure), awaiting the receive that frees a slot.

use std::fmt;
use std::time::Duration;

use crate::error::{MessagingError, MessagingResult, TrySendError};
use crate::mailbox::{MailboxConfig, MailboxStats};
use crate::message::{AgentMessage, AgentPid, MessagePriority};
use crate::{DeadLetter, DeadLetterStats};

/// How often [`AgentMailbox::wait_for_shutdown`] looks again, at most.
const CLOSE_POLL_MAX: Duration = Duration::from_millis(20);

/// An agent's mailbox: the receiving end (one receiver at a time) that can also send.
///
/// The async twin of [`crate::AgentMailbox`]; handles are cheap to clone and share one
/// queue. A second receive running concurrently on the same queue gets
/// `Err(ReceiverBusy)`.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use terraphim_agent_messaging::tokio::{AgentMailbox, AgentMessage, AgentPid, MailboxConfig};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
/// mailbox.send(AgentMessage::cast(AgentPid::new(), "test")).await?;
/// let received = mailbox.receive().await?;
/// assert_eq!(received.payload::<&str>(), Some(&"test"));
/// assert!(mailbox.try_receive().await?.is_none());
/// assert!(mailbox.receive_timeout(Duration::from_millis(1)).await.is_err());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct AgentMailbox {
    inner: crate::AgentMailbox,
}

/// A pre-resolved sending handle to a mailbox (the async twin of
/// [`crate::MailboxSender`]). After its agent is unregistered it fails with
/// `ChannelClosed`; it can never reach another agent.
#[derive(Clone)]
pub struct MailboxSender {
    inner: crate::MailboxSender,
}

/// Creates, finds and removes agents' mailboxes (the async twin of
/// [`crate::MailboxManager`]).
///
/// # Examples
///
/// ```
/// use terraphim_agent_messaging::tokio::{AgentMessage, AgentPid, MailboxConfig, MailboxManager};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = MailboxManager::new(MailboxConfig::default());
/// let pid = AgentPid::new();
/// let sender = manager.create_mailbox(pid.clone()).await?;
/// sender.send(AgentMessage::cast(AgentPid::new(), 1u64)).await?;
/// let mailbox = manager.get_mailbox(&pid).await.unwrap();
/// assert_eq!(mailbox.receive().await?.payload::<u64>(), Some(&1));
/// manager.remove_mailbox(&pid).await?;
/// assert!(manager.list_agents().await.is_empty());
/// # Ok(())
/// # }
/// ```
pub struct MailboxManager {
    inner: crate::MailboxManager,
}

// ===== impl AgentMailbox =====

impl AgentMailbox {
    /// A standalone mailbox with its own dead-letter store (the newest 10,000 letters;
    /// see [`dead_letters`](Self::dead_letters)). A refused configuration
    /// yields a mailbox whose every operation returns that `Configuration` error; use
    /// [`try_new`](Self::try_new) to get it up front.
    pub fn new(agent_id: AgentPid, config: MailboxConfig) -> Self {
        crate::AgentMailbox::new(agent_id, config).into()
    }

    /// Like [`new`](Self::new), but refuses a bad configuration.
    pub fn try_new(agent_id: AgentPid, config: MailboxConfig) -> MessagingResult<Self> {
        crate::AgentMailbox::try_new(agent_id, config).map(Into::into)
    }

    /// The sync handle on the same queue.
    pub fn as_sync(&self) -> &crate::AgentMailbox {
        &self.inner
    }

    /// Turns this handle into the sync handle on the same queue.
    pub fn into_sync(self) -> crate::AgentMailbox {
        self.inner
    }

    /// The agent this mailbox belongs to.
    pub fn agent_id(&self) -> &AgentPid {
        self.inner.agent_id()
    }

    /// The configuration.
    pub fn config(&self) -> &MailboxConfig {
        self.inner.config()
    }

    /// A sending handle to this mailbox.
    pub fn sender(&self) -> MailboxSender {
        self.inner.sender().into()
    }

    /// Queues `message` at `Normal` priority. A message refused because the mailbox is
    /// full (`MailboxFull`) or closed (`ChannelClosed`) goes to the dead letters.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll; a future dropped unpolled sends nothing.
    pub async fn send(&self, message: AgentMessage) -> MessagingResult<()> {
        self.inner.send(message)
    }

    /// Queues `message` at `priority`, dead-lettering it if refused.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll; a future dropped unpolled sends nothing.
    pub async fn send_with_priority(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.inner.send_with_priority(message, priority)
    }

    /// Queues `message` at `priority` without waiting, handing it back if refused.
    pub fn try_send(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> Result<(), TrySendError> {
        self.inner.try_send(message, priority)
    }

    /// Waits for the next message without blocking the thread. After `close`, drains
    /// what is queued, then returns `ChannelClosed`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a message is taken only in the poll that returns it, so dropping
    /// the future mid-wait (in a `select!`, a timeout, an aborted task) loses nothing;
    /// the next receive gets the message. The receiver claim is released on drop.
    pub async fn receive(&self) -> MessagingResult<AgentMessage> {
        self.inner.receive_async().await
    }

    /// Waits for a message, then appends it and up to `limit - 1` more that are ready
    /// to `buf`, in drain order, as tokio's `recv_many`. Returns how many it appended: at
    /// least 1, or 0 at once when `limit` is 0. After `close`, drains what is queued,
    /// then returns `ChannelClosed`. One receiver claim for the whole batch.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`receive`](Self::receive): the batch is taken in the poll that
    /// returns it.
    pub async fn receive_many(
        &self,
        buf: &mut Vec<AgentMessage>,
        limit: usize,
    ) -> MessagingResult<usize> {
        self.inner.receive_many_async(buf, limit).await
    }

    /// Like [`receive`](Self::receive), but gives up with `MessageTimeout` after
    /// `timeout`. A zero timeout only takes what is ready; `Duration::MAX` waits forever.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`receive`](Self::receive); a timeout loses no message either.
    pub async fn receive_timeout(&self, timeout: Duration) -> MessagingResult<AgentMessage> {
        match ::tokio::time::timeout(timeout, self.inner.receive_async()).await {
            Ok(result) => result,
            Err(_) => Err(MessagingError::MessageTimeout(self.agent_id().clone())),
        }
    }

    /// Takes a message if one is ready, without waiting. `Err(ChannelClosed)` once the
    /// mailbox is closed and drained.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll; a future dropped unpolled takes nothing.
    pub async fn try_receive(&self) -> MessagingResult<Option<AgentMessage>> {
        self.inner.try_receive()
    }

    /// A snapshot of the counters.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn stats(&self) -> MailboxStats {
        self.inner.stats()
    }

    /// Whether no message is queued (exact at rest).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Messages queued now (exact at rest).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn queue_size(&self) -> usize {
        self.inner.queue_size()
    }

    /// Closes the mailbox: sends fail from now on; the receiver drains what is queued,
    /// then gets `ChannelClosed`. A waiting receive wakes.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Whether the mailbox is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Takes the dead letters addressed to this mailbox's agent, oldest first (see
    /// [`crate::AgentMailbox::dead_letters`]).
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters()
    }

    /// The counters of the dead-letter store this mailbox reports to (see
    /// [`crate::AgentMailbox::dead_letter_stats`]).
    pub fn dead_letter_stats(&self) -> DeadLetterStats {
        self.inner.dead_letter_stats()
    }

    /// Resolves once the mailbox is closed (by [`close`](Self::close), by unregistering
    /// its agent, or by the system's shutdown). Messages may still be queued: drain them
    /// with `receive` until `ChannelClosed`.
    ///
    /// The core has no close notification yet, so this looks at the mailbox with a
    /// backoff from 1 ms up to 20 ms: it resolves at most ~20 ms after the close.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes.
    pub async fn wait_for_shutdown(&self) {
        let mut pause = Duration::from_millis(1);
        while !self.inner.is_closed() {
            ::tokio::time::sleep(pause).await;
            pause = (pause * 2).min(CLOSE_POLL_MAX);
        }
    }
}

impl From<crate::AgentMailbox> for AgentMailbox {
    fn from(inner: crate::AgentMailbox) -> Self {
        AgentMailbox { inner }
    }
}

impl From<AgentMailbox> for crate::AgentMailbox {
    fn from(mailbox: AgentMailbox) -> Self {
        mailbox.inner
    }
}

impl fmt::Debug for AgentMailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

// ===== impl MailboxSender =====

impl MailboxSender {
    /// The sync handle on the same mailbox.
    pub fn as_sync(&self) -> &crate::MailboxSender {
        &self.inner
    }

    /// Turns this handle into the sync handle on the same mailbox.
    pub fn into_sync(self) -> crate::MailboxSender {
        self.inner
    }

    /// Queues `message` at `Normal` priority; a refused message goes to the dead
    /// letters and the error says why (`MailboxFull`, `ChannelClosed`).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll; a future dropped unpolled sends nothing.
    pub async fn send(&self, message: AgentMessage) -> MessagingResult<()> {
        self.inner.send(message)
    }

    /// Queues `message` at `priority`, dead-lettering it if refused.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll; a future dropped unpolled sends nothing.
    pub async fn send_with_priority(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.inner.send_with_priority(message, priority)
    }

    /// Queues `message` at `priority` without waiting, handing it back if refused.
    pub fn try_send(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> Result<(), TrySendError> {
        self.inner.try_send(message, priority)
    }

    /// Queues `message` at `priority`, waiting up to `timeout` for room in a bounded
    /// mailbox without blocking the thread (see [`crate::MailboxSender::send_timeout`]):
    /// waiting senders get their slots in the order they began to wait. After the
    /// timeout the message is handed back as `Full`. The timeout uses `tokio::time`.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future gives up the place in line and drops the message (the
    /// timeout hands it back instead).
    pub async fn send_timeout(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
        timeout: Duration,
    ) -> Result<(), TrySendError> {
        let mut waiting = self.inner.send_when_room(message, priority);
        match ::tokio::time::timeout(timeout, &mut waiting).await {
            Ok(result) => result,
            Err(_) => match waiting.into_message() {
                Some(message) => Err(TrySendError::Full(message)),
                None => Ok(()),
            },
        }
    }

    /// Senders waiting for room in this mailbox now.
    pub fn blocked_senders(&self) -> usize {
        self.inner.blocked_senders()
    }

    /// The destination agent.
    pub fn agent_id(&self) -> &AgentPid {
        self.inner.agent_id()
    }

    /// Whether the mailbox is closed (sends will fail).
    pub fn is_closed(&self) -> bool {
        self.inner.is_closed()
    }

    /// Messages queued in the destination now.
    pub fn queue_size(&self) -> usize {
        self.inner.queue_size()
    }

    /// Whether both handles refer to the same mailbox.
    pub fn same_mailbox(&self, other: &MailboxSender) -> bool {
        self.inner.same_mailbox(&other.inner)
    }
}

impl From<crate::MailboxSender> for MailboxSender {
    fn from(inner: crate::MailboxSender) -> Self {
        MailboxSender { inner }
    }
}

impl From<MailboxSender> for crate::MailboxSender {
    fn from(sender: MailboxSender) -> Self {
        sender.inner
    }
}

impl fmt::Debug for MailboxSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

// ===== impl MailboxManager =====

impl MailboxManager {
    /// A manager whose mailboxes use `default_config`.
    pub fn new(default_config: MailboxConfig) -> Self {
        crate::MailboxManager::new(default_config).into()
    }

    /// The sync manager underneath.
    pub fn as_sync(&self) -> &crate::MailboxManager {
        &self.inner
    }

    /// Creates `agent_id`'s mailbox and returns a sender to it.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn create_mailbox(&self, agent_id: AgentPid) -> MessagingResult<MailboxSender> {
        self.inner.create_mailbox(agent_id).map(Into::into)
    }

    /// A sender to `agent_id`'s mailbox.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn get_mailbox_sender(&self, agent_id: &AgentPid) -> Option<MailboxSender> {
        self.inner.get_mailbox_sender(agent_id).map(Into::into)
    }

    /// A handle to `agent_id`'s mailbox (the same queue senders deliver into).
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn get_mailbox(&self, agent_id: &AgentPid) -> Option<AgentMailbox> {
        self.inner.get_mailbox(agent_id).map(Into::into)
    }

    /// Removes and closes `agent_id`'s mailbox. A receiver still holding a handle drains
    /// what is queued; with none left, the messages go to the dead letters.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll.
    pub async fn remove_mailbox(&self, agent_id: &AgentPid) -> MessagingResult<()> {
        self.inner.remove_mailbox(agent_id)
    }

    /// Every agent with a mailbox.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn list_agents(&self) -> Vec<AgentPid> {
        self.inner.list_agents()
    }

    /// Statistics of every mailbox.
    ///
    /// # Cancel safety
    ///
    /// Completes in its first poll and changes nothing.
    pub async fn get_all_stats(&self) -> Vec<MailboxStats> {
        self.inner.get_all_stats()
    }

    /// How many mailboxes exist.
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether there are no mailboxes.
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }

    /// Removes and closes every mailbox.
    pub fn close_all(&self) {
        self.inner.close_all();
    }

    /// Takes the dead letters of this manager's mailboxes, oldest first (see
    /// [`crate::MailboxManager::dead_letters`]).
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.inner.dead_letters()
    }

    /// The counters of this manager's dead-letter store, dropped letters included.
    pub fn dead_letter_stats(&self) -> DeadLetterStats {
        self.inner.dead_letter_stats()
    }
}

impl From<crate::MailboxManager> for MailboxManager {
    fn from(inner: crate::MailboxManager) -> Self {
        MailboxManager { inner }
    }
}

impl fmt::Debug for MailboxManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}
