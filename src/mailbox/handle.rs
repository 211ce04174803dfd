//! The public handles: [`AgentMailbox`] (receive, and send) and [`MailboxSender`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use super::shared::{Claim, Settings, Shared};
use super::{MailboxConfig, MailboxStats};
use crate::dead_letter::{DeadLetter, DeadLetterStats, DeadLetters};
use crate::error::{MessagingError, MessagingResult, TrySendError};
use crate::message::{AgentMessage, AgentPid, MessagePriority};
use crate::sync::Arc;
use crate::wait::{block_until, Look, Waiter};

/// An agent's mailbox: the receiving end (one receiver at a time) that can also send.
///
/// Handles are cheap to clone and all refer to the same queue; `MessageSystem::get_mailbox`
/// returns one for the queue the router delivers into. When the last handle is dropped
/// after the mailbox was closed, messages still queued go to the dead letters. A
/// standalone mailbox (`AgentMailbox::new`) closes when its last handle is dropped, so
/// its senders see `ChannelClosed` instead of filling a queue nobody reads.
///
/// A standalone mailbox has its own bounded dead-letter store
/// ([`DEFAULT_DEAD_LETTER_CAPACITY`](crate::DEFAULT_DEAD_LETTER_CAPACITY) letters, the
/// newest), which [`dead_letters`](Self::dead_letters) drains; a registered one
/// reports to its system's.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use terraphim_agent_messaging::{AgentMailbox, AgentMessage, AgentPid, MailboxConfig};
///
/// let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
/// mailbox.send(AgentMessage::cast(AgentPid::new(), "test"))?;
/// let received = mailbox.receive()?;
/// assert_eq!(received.payload::<&str>(), Some(&"test"));
/// assert!(mailbox.try_receive()?.is_none());
/// assert!(mailbox.receive_timeout(Duration::from_millis(1)).is_err());
/// # Ok::<(), terraphim_agent_messaging::MessagingError>(())
/// ```
pub struct AgentMailbox {
    shared: Arc<Shared>,
}

/// A pre-resolved sending handle: no lookup per send. After its agent is unregistered it
/// fails with `ChannelClosed`; it can never reach another agent.
#[derive(Clone)]
pub struct MailboxSender {
    shared: Arc<Shared>,
}

// ===== impl AgentMailbox =====

impl AgentMailbox {
    /// A standalone mailbox with its own dead-letter store (the newest
    /// [`DEFAULT_DEAD_LETTER_CAPACITY`](crate::DEFAULT_DEAD_LETTER_CAPACITY) letters;
    /// see [`dead_letters`](Self::dead_letters)).
    ///
    /// A refused configuration (see [`MailboxConfig::validate`]) yields a mailbox whose
    /// every operation returns that `Configuration` error; use
    /// [`AgentMailbox::try_new`] to get the error up front.
    pub fn new(agent_id: AgentPid, config: MailboxConfig) -> Self {
        let settings = Settings::new(config, None, Arc::new(DeadLetters::default()), false);
        Self::from_shared(Arc::new(Shared::new(agent_id, Arc::new(settings), true)))
    }

    /// Like [`AgentMailbox::new`], but refuses a bad configuration.
    pub fn try_new(agent_id: AgentPid, config: MailboxConfig) -> MessagingResult<Self> {
        config.validate().map_err(MessagingError::Configuration)?;
        Ok(Self::new(agent_id, config))
    }

    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        shared.rx_handles.fetch_add(1, Relaxed);
        AgentMailbox { shared }
    }

    /// The agent this mailbox belongs to.
    pub fn agent_id(&self) -> &AgentPid {
        &self.shared.pid
    }

    /// The configuration.
    pub fn config(&self) -> &MailboxConfig {
        &self.shared.settings.config
    }

    /// A sending handle to this mailbox.
    pub fn sender(&self) -> MailboxSender {
        MailboxSender {
            shared: self.shared.clone(),
        }
    }

    /// Queues `message` at `Normal` priority. A message refused because the mailbox is
    /// full or closed goes to the dead letters, and the error says which.
    pub fn send(&self, message: AgentMessage) -> MessagingResult<()> {
        self.shared
            .send_or_dead_letter(message, MessagePriority::Normal)
    }

    /// Queues `message` at `priority`, dead-lettering it if refused.
    pub fn send_with_priority(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.shared.send_or_dead_letter(message, priority)
    }

    /// Queues `message` at `priority`, handing it back if refused.
    pub fn try_send(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> Result<(), TrySendError> {
        self.shared.try_send(message, priority)
    }

    /// Blocks until a message arrives. After `close`, drains what is queued, then
    /// returns `ChannelClosed`.
    #[inline]
    pub fn receive(&self) -> MessagingResult<AgentMessage> {
        self.receive_within(None)
    }

    /// Like [`receive`](Self::receive), but gives up with `MessageTimeout` after
    /// `timeout`, counted from the end of a short spin (a few microseconds, no yield)
    /// that comes before the clock is read. It returns by the deadline, give or take one
    /// wake-up the scheduler delays, also while a producer that claimed the next slot
    /// is descheduled mid-send. A zero timeout takes only what is ready or arrives
    /// during that spin ([`try_receive`](Self::try_receive) does not spin for arrivals);
    /// `Duration::MAX` waits forever.
    #[inline]
    pub fn receive_timeout(&self, timeout: Duration) -> MessagingResult<AgentMessage> {
        self.receive_within(Some(timeout))
    }

    /// Takes a ready message inline; only waiting (and reading the clock for a
    /// timeout) happens out of line.
    #[inline]
    fn receive_within(&self, timeout: Option<Duration>) -> MessagingResult<AgentMessage> {
        let claim = self.shared.claim()?;
        self.shared.on_receive_call();
        match self.shared.pop(&claim, Look::Plain) {
            Some(result) => result,
            None => self.wait_for_message(&claim, timeout),
        }
    }

    #[inline(never)]
    fn wait_for_message(
        &self,
        claim: &Claim<'_>,
        timeout: Option<Duration>,
    ) -> MessagingResult<AgentMessage> {
        let outcome = block_until(&self.shared.waiter, timeout, |look| {
            self.shared.pop(claim, look)
        });
        match outcome {
            Some(result) => result,
            None => Err(MessagingError::MessageTimeout(self.shared.pid.clone())),
        }
    }

    /// Blocks until a message arrives, then appends it and up to `limit - 1` more that
    /// are ready to `buf`, in the order `receive` would return them (tokio's
    /// `recv_many`). Returns how many it appended: at least 1, or 0 at once when `limit`
    /// is 0. After `close`, drains what is queued, then returns `ChannelClosed`.
    ///
    /// The whole batch takes one receiver claim and one statistics check, so an agent
    /// that drains its mailbox in batches pays those once per batch rather than once per
    /// message. `buf` grows only by what is taken (`limit` is not preallocated).
    pub fn receive_many(
        &self,
        buf: &mut Vec<AgentMessage>,
        limit: usize,
    ) -> MessagingResult<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let claim = self.shared.claim()?;
        self.shared.on_receive_call();
        let first = match self.shared.pop(&claim, Look::Plain) {
            Some(result) => result?,
            None => self.wait_for_message(&claim, None)?,
        };
        buf.push(first);
        Ok(1 + self.take_ready(&claim, buf, limit - 1))
    }

    /// Appends up to `limit` messages that are ready now; stops at the first gap (or at
    /// the close, which the next receive reports).
    fn take_ready(&self, claim: &Claim<'_>, buf: &mut Vec<AgentMessage>, limit: usize) -> usize {
        let mut taken = 0;
        while taken < limit {
            match self.shared.pop(claim, Look::Plain) {
                Some(Ok(message)) => {
                    buf.push(message);
                    taken += 1;
                }
                Some(Err(_)) | None => break,
            }
        }
        taken
    }

    /// [`receive_many`](Self::receive_many) without blocking the thread, on any executor.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves loses no message: it waits as
    /// [`receive_async`](Self::receive_async) does, and takes the rest of the batch in
    /// the same poll that returns.
    pub async fn receive_many_async(
        &self,
        buf: &mut Vec<AgentMessage>,
        limit: usize,
    ) -> MessagingResult<usize> {
        if limit == 0 {
            return Ok(0);
        }
        let mut first = ReceiveFuture {
            mailbox: self,
            claim: None,
            registered: false,
        };
        std::future::poll_fn(|cx| {
            let message = match Pin::new(&mut first).poll_keeping_claim(cx) {
                Poll::Ready(Ok(message)) => message,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            buf.push(message);
            let claim = first
                .claim
                .take()
                .expect("held by the poll that took a message");
            Poll::Ready(Ok(1 + self.take_ready(&claim, buf, limit - 1)))
        })
        .await
    }

    /// Takes a message if one is ready, without blocking. `Err(ChannelClosed)` once the
    /// mailbox is closed and drained.
    ///
    /// It returns within a few microseconds whatever producers do. `Ok(None)` means
    /// nothing can be taken now: the mailbox is empty, or the next message in priority
    /// order is claimed by a send still writing it (a producer descheduled mid-send).
    /// In the second case a later message whose send has returned may wait behind it;
    /// [`receive`](Self::receive) gets it as soon as that write lands.
    pub fn try_receive(&self) -> MessagingResult<Option<AgentMessage>> {
        let claim = self.shared.claim()?;
        self.shared.on_receive_call();
        self.shared.pop(&claim, Look::Plain).transpose()
    }

    /// A future that resolves to the next message, on any executor.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves loses no message: a message is taken only
    /// in the poll that returns it.
    pub fn receive_async(&self) -> ReceiveFuture<'_> {
        ReceiveFuture {
            mailbox: self,
            claim: None,
            registered: false,
        }
    }

    /// Polls for the next message, registering `cx`'s waker if none is ready.
    ///
    /// Each call claims the receiver for its duration only; prefer
    /// [`receive_async`](Self::receive_async), which holds the claim while it waits.
    /// After `Pending`, the task is woken when a message arrives, or when another
    /// receiver (a `receive` on another handle) takes its place: its next poll then
    /// gets `ReceiverBusy` while that receiver holds the claim. Two tasks polling one
    /// mailbox this way keep waking each other: use one receiver at a time.
    pub fn poll_receive(&self, cx: &mut Context<'_>) -> Poll<MessagingResult<AgentMessage>> {
        match self.shared.claim() {
            Ok(claim) => self.poll_claimed(&claim, cx, &mut false),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// One poll under the claim: a message if one is ready; else registers `cx`'s
    /// waker, looks once more, and is `Pending`. It never waits for a producer longer
    /// than a few microseconds: one descheduled mid-send wakes the task when it writes.
    ///
    /// `registered`: whether the registered waker is this receiver's own (a
    /// `ReceiveFuture` that registered in an earlier poll and still holds the claim);
    /// kept up to date. A waker this registration displaces is then its own old one;
    /// otherwise it is another receiver's, and is woken (`wait`, "Whose waiter").
    fn poll_claimed(
        &self,
        claim: &Claim<'_>,
        cx: &mut Context<'_>,
        registered: &mut bool,
    ) -> Poll<MessagingResult<AgentMessage>> {
        let waiter = &self.shared.waiter;
        if let Some(r) = self.shared.pop(claim, Look::Plain) {
            if std::mem::take(registered) {
                waiter.deregister();
            }
            return Poll::Ready(r);
        }
        let displaced = waiter.register(Waiter::Task(cx.waker().clone()));
        if let Some(displaced) = displaced {
            if !*registered {
                wake_displaced(displaced);
            }
        }
        *registered = true;
        match self.shared.pop(claim, Look::BeforeSleep) {
            Some(r) => {
                waiter.deregister();
                *registered = false;
                Poll::Ready(r)
            }
            None => Poll::Pending,
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> MailboxStats {
        stats_of(&self.shared)
    }

    /// Whether no message is queued (exact at rest).
    pub fn is_empty(&self) -> bool {
        self.shared.len() == 0
    }

    /// Messages queued now (exact at rest).
    pub fn queue_size(&self) -> usize {
        self.shared.len()
    }

    /// Closes the mailbox: sends fail from now on; the receiver drains what is queued,
    /// then gets `ChannelClosed`. A blocked receiver wakes.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Whether the mailbox is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.lanes().is_closed()
    }

    /// Takes the dead letters addressed to this mailbox's agent, oldest first: the
    /// messages refused by this mailbox (full or closed), and, for a registered agent,
    /// whatever else its system gave up on for it. A standalone mailbox's store holds
    /// nothing else; a registered one's is the system's, whose other letters stay.
    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        let pid = &self.shared.pid;
        self.shared
            .settings
            .dead_letters
            .drain_where(|letter| &letter.to == pid)
    }

    /// The counters of the dead-letter store this mailbox reports to: its own when
    /// standalone, its system's (or manager's) when registered.
    pub fn dead_letter_stats(&self) -> DeadLetterStats {
        self.shared.settings.dead_letters.stats()
    }

    /// Blocks until the mailbox is closed and drained (`receive` would return
    /// `ChannelClosed`), handing every message still arriving to `on_message`.
    pub fn drain_until_closed(&self, mut on_message: impl FnMut(AgentMessage)) {
        while let Ok(message) = self.receive() {
            on_message(message);
        }
    }
}

pub(crate) fn stats_of(shared: &Shared) -> MailboxStats {
    MailboxStats {
        agent_id: shared.pid.clone(),
        total_messages_received: shared.lanes().pushed() as u64,
        total_messages_processed: shared.processed(),
        current_queue_size: shared.len(),
        max_queue_size_reached: shared.max_len(),
        last_message_received: shared.last_received(),
        last_message_processed: shared.last_processed(),
        average_processing_time: shared.average_processing(),
        messages_dead_lettered: shared.dead_lettered(),
    }
}

impl Clone for AgentMailbox {
    fn clone(&self) -> Self {
        Self::from_shared(self.shared.clone())
    }
}

impl Drop for AgentMailbox {
    fn drop(&mut self) {
        self.shared.release_rx_handle();
    }
}

impl fmt::Debug for AgentMailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentMailbox")
            .field("agent_id", &self.shared.pid)
            .field("queue_size", &self.shared.len())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// The future of [`AgentMailbox::receive_async`].
///
/// It holds the receiver claim from its first poll until it resolves or is dropped.
pub struct ReceiveFuture<'a> {
    mailbox: &'a AgentMailbox,
    claim: Option<Claim<'a>>,
    /// Whether its waker is registered in the wait cell (removed when it resolves or
    /// is dropped, so that the cell never holds a waker nobody will poll for).
    registered: bool,
}

impl Drop for ReceiveFuture<'_> {
    fn drop(&mut self) {
        // Still under the claim (the field drops after this): the registration is ours.
        if self.registered {
            self.mailbox.shared.waiter.deregister();
        }
    }
}

impl Future for ReceiveFuture<'_> {
    type Output = MessagingResult<AgentMessage>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let poll = self.as_mut().poll_keeping_claim(cx);
        if poll.is_ready() {
            self.get_mut().claim = None;
        }
        poll
    }
}

impl<'a> ReceiveFuture<'a> {
    /// One poll for the next message; the receiver claim stays held (in `claim`) after
    /// a message is returned, for a caller that goes on taking more.
    fn poll_keeping_claim(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<MessagingResult<AgentMessage>> {
        let this = self.get_mut();
        if this.claim.is_none() {
            match this.mailbox.shared.claim() {
                Ok(claim) => {
                    this.mailbox.shared.on_receive_call();
                    this.claim = Some(claim);
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let claim = this.claim.as_ref().expect("claimed above");
        this.mailbox.poll_claimed(claim, cx, &mut this.registered)
    }
}

impl fmt::Debug for ReceiveFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveFuture")
            .field("agent_id", &self.mailbox.shared.pid)
            .finish()
    }
}

// ===== impl MailboxSender =====

impl MailboxSender {
    pub(crate) fn from_shared(shared: Arc<Shared>) -> Self {
        MailboxSender { shared }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Queues `message` at `Normal` priority; a refused message goes to the dead
    /// letters and the error says why (`MailboxFull`, `ChannelClosed`).
    pub fn send(&self, message: AgentMessage) -> MessagingResult<()> {
        self.shared
            .send_or_dead_letter(message, MessagePriority::Normal)
    }

    /// Queues `message` at `priority`, dead-lettering it if refused.
    pub fn send_with_priority(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> MessagingResult<()> {
        self.shared.send_or_dead_letter(message, priority)
    }

    /// Queues `message` at `priority`, handing it back if refused.
    #[inline]
    pub fn try_send(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> Result<(), TrySendError> {
        self.shared.try_send(message, priority)
    }

    /// Queues `message` at `priority`, waiting up to `timeout` for room in a bounded
    /// mailbox (back-pressure); blocks the thread meanwhile. Senders that wait get
    /// their slots in the order they began to wait, each woken by the receive that
    /// frees one (no thread or timer per waiter). After the timeout the message is
    /// handed back as `Full`; a closed mailbox hands it back as `Closed` (at once, or
    /// when it closes during the wait). An unbounded mailbox never waits; a zero
    /// timeout is [`try_send`](Self::try_send); `Duration::MAX` waits without end.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use terraphim_agent_messaging::{AgentMailbox, AgentMessage, AgentPid, MailboxConfig, MessagePriority, TrySendError};
    ///
    /// let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig { max_messages: 1, ..Default::default() });
    /// let sender = mailbox.sender();
    /// sender.send_timeout(AgentMessage::cast(AgentPid::nil(), 1u64), MessagePriority::Normal, Duration::from_millis(10)).unwrap();
    /// // Full, and nobody receives: handed back after the timeout.
    /// let second = sender.send_timeout(AgentMessage::cast(AgentPid::nil(), 2u64), MessagePriority::Normal, Duration::from_millis(10));
    /// assert!(matches!(second, Err(TrySendError::Full(m)) if m.payload::<u64>() == Some(&2)));
    /// ```
    pub fn send_timeout(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
        timeout: Duration,
    ) -> Result<(), TrySendError> {
        self.shared.send_timeout(message, priority, timeout)
    }

    /// A future that queues `message` once there is room (the core of the tokio
    /// twin's `send_timeout`).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    pub(crate) fn send_when_room(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> super::backpressure::SendWhenRoom<'_> {
        super::backpressure::SendWhenRoom::new(&self.shared, message, priority)
    }

    /// Senders waiting for room in this mailbox now (`send_timeout`).
    pub fn blocked_senders(&self) -> usize {
        self.shared.blocked_senders()
    }

    /// The destination agent.
    pub fn agent_id(&self) -> &AgentPid {
        &self.shared.pid
    }

    /// Whether the mailbox is closed (sends will fail).
    pub fn is_closed(&self) -> bool {
        self.shared.lanes().is_closed()
    }

    /// Messages queued in the destination now (the `LeastLoaded` metric).
    pub fn queue_size(&self) -> usize {
        self.shared.len()
    }

    /// Whether both handles refer to the same mailbox.
    pub fn same_mailbox(&self, other: &MailboxSender) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl fmt::Debug for MailboxSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxSender")
            .field("agent_id", &self.shared.pid)
            .finish()
    }
}

/// Wakes a receiver whose registration another one displaced, so that it polls again
/// and sees the message, or `ReceiverBusy` while the other holds the claim (issue 12,
/// item 3: the displaced waker used to be dropped, and that task slept on).
fn wake_displaced(displaced: Waiter) {
    displaced.wake();
}

/// How often [`AgentMailbox::wait_for_shutdown`] looks again, at most.
const CLOSE_POLL_MAX: Duration = Duration::from_millis(20);

impl AgentMailbox {
    /// Blocks until the mailbox is closed (by [`close`](Self::close), by unregistering
    /// its agent, or by the system's shutdown); returns at once if it already is.
    /// Messages may still be queued: drain them with `receive` until `ChannelClosed`.
    ///
    /// The sync twin of 1.x's `wait_for_shutdown().await`. There is no close
    /// notification to wait on, so it looks at the mailbox with a backoff from 1 ms up
    /// to 20 ms: it returns at most ~20 ms after the close.
    pub fn wait_for_shutdown(&self) {
        let mut pause = Duration::from_millis(1);
        while !self.is_closed() {
            std::thread::sleep(pause);
            pause = (pause * 2).min(CLOSE_POLL_MAX);
        }
    }
}
