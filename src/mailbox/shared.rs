//! The state one mailbox's senders and receiver share.
//!
//! # Ground rules
//!
//! - Any thread may send (`try_send`) and `close`.
//! - Only the holder of the receiver claim (`receiving`, taken by [`Shared::claim`]) may
//!   pop, peek, or register in `waiter`. This is what makes each lane single-consumer.
//! - Bounded mode reserves capacity in `reserved` *before* pushing and releases it after
//!   popping, so the queue never holds more than `capacity` messages, even transiently.
//! - After `close`, a message is in the mailbox iff its push succeeded before the close
//!   mark. The last receiver handle to go (or `close` itself, if none is left) drains
//!   what remains into the dead letters, so nothing is lost silently.
//!
//! # Memory
//!
//! A lane holds up to two blocks (~3 KiB each) while messages flow through it. The
//! receiver gives them back whenever it is about to sleep: its last look before
//! sleeping ([`Look::BeforeSleep`], in a blocking receive once its spin and yields
//! found nothing, or an async receive about to return `Pending`) trims every lane that
//! is empty (`LaneRef::trim`): the block and the spare are freed, and the next send
//! into that lane allocates a block again. So an agent waiting for its next message
//! holds no block, whatever bursts it has seen; what stays is the mailbox itself, the
//! three extra lanes once a non-`Normal` message made them (512 bytes; they live as
//! long as the mailbox, see `priority`) and the sampled statistics. The same happens
//! once a closed mailbox is drained. A receiver that never sleeps (only `try_receive`)
//! keeps its blocks, reused for the next messages, until the mailbox is dropped. Sends
//! pay nothing for this per message; a receive that sleeps pays the trim, and the send
//! that wakes it the install of a block, which comes from the thread's one-block cache
//! when the same thread trimmed one (`block_cache`), else from the allocator: small
//! beside a thread's sleep and wake, ~4% of an async call's round trip between two
//! tasks of one runtime thread (see the README, "Performance").
#![allow(unsafe_code)]

use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::time::{Duration, Instant};

use super::lane::{Pop, Reserved};
use super::priority::{drop_lanes, ExtraLanes, Lanes, LanesRx, LanesTx};
use super::MailboxConfig;
use crate::breaker::Breaker;
use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadLetters};
use crate::error::{MessagingError, TrySendError};
use crate::message::{AgentMessage, AgentPid, MessagePriority};
use crate::stats::record_max;
use crate::sync::{fence, Arc, AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, BriefSpin, SpinWait};
use crate::wait::{Look, WaitCell, Waiter};

/// Timestamps and processing times are sampled once per this many messages, so the
/// send and receive paths read no clock for the other 63. The same samples time a
/// message's wait in the mailbox for the `metrics` feature.
pub(crate) const SAMPLE_EVERY: usize = 64;

/// Settings shared by every mailbox of one system (one pointer per mailbox).
#[derive(Debug)]
pub(crate) struct Settings {
    /// The seed's four fields.
    pub(crate) config: MailboxConfig,
    /// Anti-starvation budget; 0 = strict priority order.
    pub(crate) budget: u32,
    /// Set when `config` was refused: every operation then reports it.
    pub(crate) config_error: Option<String>,
    /// Where refused and abandoned messages go.
    pub(crate) dead_letters: Arc<DeadLetters>,
    /// Time origin for the sampled timestamps.
    pub(crate) epoch: Instant,
    /// `epoch` on the wall clock.
    pub(crate) epoch_utc: chrono::DateTime<chrono::Utc>,
    /// What a registered mailbox does when its last receiving handle is dropped while
    /// the thread is panicking: set once by the system that owns the mailboxes (it
    /// stops the agent with reason `panicked: …`). The mailbox layer cannot name the
    /// system, so the system hands it this hook; one per system, not per mailbox.
    pub(crate) on_crash: std::sync::OnceLock<CrashHook>,
}

/// See [`Settings::on_crash`]: called with the mailbox whose receiver crashed.
pub(crate) struct CrashHook(pub(crate) Box<dyn Fn(&Shared) + Send + Sync>);

impl std::fmt::Debug for CrashHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CrashHook")
    }
}

impl Settings {
    /// `cluster_node`: the mailboxes belong to a cluster node, where
    /// `enable_persistence` is allowed (the node stores their messages).
    pub(crate) fn new(
        config: MailboxConfig,
        budget: Option<u32>,
        dead_letters: Arc<DeadLetters>,
        cluster_node: bool,
    ) -> Self {
        let config_error = config.validate_on(cluster_node).err();
        // `preserve_order: false` lets the anti-starvation budget reorder priorities.
        let budget = budget.unwrap_or(if config.preserve_order {
            0
        } else {
            DEFAULT_BUDGET
        });
        Settings {
            config,
            budget,
            config_error,
            dead_letters,
            epoch: Instant::now(),
            epoch_utc: chrono::Utc::now(),
            on_crash: std::sync::OnceLock::new(),
        }
    }

    fn nanos_since_epoch(&self) -> u64 {
        // Stored +1 so that 0 can mean "never".
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX - 1) + 1
    }

    pub(crate) fn to_utc(&self, stamp: u64) -> Option<chrono::DateTime<chrono::Utc>> {
        let nanos = stamp.checked_sub(1)?;
        Some(
            self.epoch_utc
                + chrono::Duration::nanoseconds(i64::try_from(nanos).unwrap_or(i64::MAX)),
        )
    }
}

/// The budget used when `preserve_order` is false and none is given.
pub(crate) const DEFAULT_BUDGET: u32 = 64;

/// Statistics sampled once per [`SAMPLE_EVERY`] messages, allocated with the first
/// message so that an idle mailbox does not carry them.
#[derive(Default)]
struct Sampled {
    /// Messages drained into the dead letters after close.
    dead_lettered: AtomicU64,
    /// When a message was last received / processed (nanos since epoch + 1; 0 = never).
    last_received: AtomicU64,
    last_processed: AtomicU64,
    /// Start of a sampled processing interval (receiver only), 0 = none.
    sample_start: AtomicU64,
    /// Moving average of sampled processing times, in nanoseconds.
    avg_processing: AtomicU64,
    /// High-water mark of the queue length.
    max_len: AtomicUsize,
    /// `metrics`: one message being timed from push to receive, as (the pop count at
    /// which it will be received, nanos since epoch + 1 when pushed). Exact while only
    /// the `Normal` lane exists (pushes are received in order); with priorities, the
    /// count is the total pushed so far, and the wait measured is that of whichever
    /// message is received at that count. Producers and the receiver only `try_lock`
    /// it, on their sampled (1 in 64) paths.
    #[cfg(feature = "metrics")]
    wait_mark: crate::sync::Mutex<Option<(usize, u64)>>,
}

/// One mailbox.
///
/// # Layout
///
/// `repr(C)` keeps the fields in three groups, so that a cache line written on every
/// send is never one the receiver reads on every receive, and the other way round:
///
/// - **send**: what producers write (the claim counter, bounded reservations) or read
///   on every send (`capacity`, the wait cell's state, their copy of the extra lanes'
///   pointer);
/// - **cold**: written rarely, read on slow paths only (the pid a lookup compares
///   lives in the agent table, not here);
/// - **receive**: what the receiver writes (heads, pop count, claim) or reads on every
///   receive (the extra lanes' pointer, the sampled stats, the settings).
///
/// The cold group spans at least `HOT_GAP` (56) bytes. Every field is 8-aligned, so
/// that gap keeps the two hot groups off each other's 64-byte lines whatever the address
/// (checked at compile time). It does not cover 128-byte lines or x86's adjacent-line
/// prefetch, as `CachePadded` would: padding each group to 128 bytes would cost ~300
/// more bytes per idle agent (the target is 256 in all). Producers also touch the
/// receive group once per block, to take the lane's spare block.
#[repr(C)]
pub(crate) struct Shared {
    // ----- send -----
    /// The `Normal` lane's tail (claims), and the producers' copy of the extra lanes'
    /// pointer.
    tx: LanesTx<AgentMessage>,
    /// Bounded mode: messages queued or being queued. Unused when unbounded.
    pub(super) reserved: AtomicUsize,
    /// Bounded capacity; 0 = unbounded.
    pub(super) capacity: usize,
    /// The receiver's wait cell: its state word (first) is read on every send and
    /// written when the receiver goes to sleep; the waiter after it is cold.
    pub(crate) waiter: WaitCell,

    // ----- cold -----
    pub(crate) pid: AgentPid,
    /// This destination's circuit breaker (used only when the system has one).
    pub(crate) breaker: Breaker,
    /// `AgentMailbox` handles alive (receivers that could still drain).
    pub(crate) rx_handles: AtomicUsize,
    /// Senders waiting for room (`send_timeout`); null until the first one waits
    /// (see `backpressure`).
    pub(super) send_waiters: AtomicPtr<super::backpressure::SendWaiters>,

    // ----- receive -----
    /// The `Normal` lane's head.
    rx: LanesRx<AgentMessage>,
    /// Messages popped by receivers (written only by the claim holder).
    pops: AtomicUsize,
    /// The receiver claim: true while some receiver pops.
    receiving: AtomicBool,
    /// A standalone mailbox (`AgentMailbox::new`): nothing can make a new receiver
    /// handle, so the last one to go closes it (its senders then get `ChannelClosed`).
    detached: bool,
    /// The extra lanes' pointer.
    extra: ExtraLanes<AgentMessage>,
    /// Sampled statistics; null until the first sample.
    sampled: AtomicPtr<Sampled>,
    pub(crate) settings: Arc<Settings>,
}

/// The least distance in bytes between the send and receive groups of [`Shared`]: with
/// 8-aligned fields, the last send byte and the first receive byte then never share a
/// 64-byte line.
#[cfg(not(loom))]
const HOT_GAP: usize = 56;

// The layout promise, checked at compile time (loom's atomics have other sizes).
#[cfg(not(loom))]
const _: () = {
    use std::mem::{offset_of, size_of};
    let send_end = offset_of!(Shared, waiter) + size_of::<usize>();
    assert!(offset_of!(Shared, rx) - send_end >= HOT_GAP);
    assert!(offset_of!(Shared, extra) > offset_of!(Shared, rx));
    assert!(offset_of!(Shared, settings) > offset_of!(Shared, rx));
};

/// A send between its claim and its write (see [`Shared::half_send`]).
pub(crate) struct HalfSent<'a> {
    shared: &'a Shared,
    reserved: Reserved<'a, AgentMessage>,
    priority: MessagePriority,
}

impl HalfSent<'_> {
    /// Writes `message` and wakes the receiver: the rest of `try_send`.
    pub(crate) fn finish(self, message: AgentMessage) {
        let before = self.reserved.before;
        self.reserved.write(message);
        self.shared.waiter.wake();
        if before % SAMPLE_EVERY == 0 {
            self.shared.sample_received(before, self.priority);
        }
    }
}

/// A receiver taken from a mailbox's wait cell by a push, to be woken by the pusher
/// once it holds no lock (see [`Shared::try_push`]). Dropping it unwoken would lose
/// the wake-up, hence `must_use`.
#[must_use = "the receiver sleeps until this is woken"]
pub(crate) struct Wake(Option<Waiter>);

impl Wake {
    /// Nobody to wake.
    pub(crate) const NONE: Wake = Wake(None);

    /// Wakes the receiver, if there was one waiting.
    #[inline]
    pub(crate) fn now(self) {
        if let Some(waiter) = self.0 {
            waiter.wake();
        }
    }
}

/// The receiver claim; released on drop.
pub(crate) struct Claim<'a>(&'a Shared);

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.0.receiving.store(false, Release);
    }
}

impl Shared {
    pub(crate) fn new(pid: AgentPid, settings: Arc<Settings>, detached: bool) -> Self {
        let shared = Shared {
            pid,
            tx: LanesTx::new(),
            extra: ExtraLanes::new(),
            waiter: WaitCell::new(),
            capacity: settings.config.max_messages,
            reserved: AtomicUsize::new(0),
            receiving: AtomicBool::new(false),
            detached,
            rx_handles: AtomicUsize::new(0),
            pops: AtomicUsize::new(0),
            sampled: AtomicPtr::new(std::ptr::null_mut()),
            rx: LanesRx::new(),
            settings,
            breaker: Breaker::new(),
            send_waiters: AtomicPtr::new(std::ptr::null_mut()),
        };
        if shared.settings.config_error.is_some() {
            shared.lanes().close();
        }
        shared
    }

    /// The lanes, through both sides.
    #[inline]
    pub(crate) fn lanes(&self) -> Lanes<'_, AgentMessage> {
        Lanes::new(&self.tx, &self.rx, &self.extra)
    }

    /// The sampled statistics, allocating them on first use.
    fn sampled(&self) -> &Sampled {
        if let Some(sampled) = self.sampled_if_any() {
            return sampled;
        }
        let new = Box::into_raw(Box::<Sampled>::default());
        match self
            .sampled
            .compare_exchange(std::ptr::null_mut(), new, AcqRel, Acquire)
        {
            // SAFETY: installed from a `Box` just now; freed only in `Drop`.
            Ok(_) => unsafe { &*new },
            Err(current) => {
                // SAFETY: `new` was never published.
                drop(unsafe { Box::from_raw(new) });
                // SAFETY: installed by another thread from a `Box`; freed only in `Drop`.
                unsafe { &*current }
            }
        }
    }

    fn sampled_if_any(&self) -> Option<&Sampled> {
        let p = self.sampled.load(Acquire);
        // SAFETY: a non-null pointer was installed from a `Box` and is freed only in
        // `Drop`.
        (!p.is_null()).then(|| unsafe { &*p })
    }

    /// The error every operation reports on a refused configuration, if any.
    pub(crate) fn config_error(&self) -> Option<MessagingError> {
        self.settings
            .config_error
            .as_ref()
            .map(|e| MessagingError::Configuration(e.clone()))
    }

    // ===== send side =====

    /// Queues `message` at `priority`, or hands it back.
    #[inline]
    pub(crate) fn try_send(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> Result<(), TrySendError> {
        let (pushed, wake) = self.try_push(message, priority);
        wake.now();
        pushed
    }

    /// [`try_send`](Self::try_send) for a caller that holds a lock (the agent table's,
    /// a group's): the receiver it must wake comes back as a [`Wake`], to be woken once
    /// the lock is released. A waker is user code; it may route, register or join a
    /// group, and must not find the router's locks held (issue 12, item 4).
    #[inline]
    pub(crate) fn try_push(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> (Result<(), TrySendError>, Wake) {
        if self.capacity > 0 && !self.reserve() {
            let refused = if self.lanes().is_closed() {
                TrySendError::Closed(message)
            } else {
                TrySendError::Full(message)
            };
            return (Err(refused), Wake::NONE);
        }
        match self.lanes().push(priority, message) {
            Ok(before) => {
                let wake = Wake(self.waiter.take());
                if before % SAMPLE_EVERY == 0 {
                    self.sample_received(before, priority);
                }
                (Ok(()), wake)
            }
            Err(message) => {
                if self.capacity > 0 {
                    self.reserved.fetch_sub(1, AcqRel);
                }
                // This push may have published the lane's first block before finding the
                // lane closed, and a receiver may sleep on that block (`lane`).
                (Err(TrySendError::Closed(message)), Wake(self.waiter.take()))
            }
        }
    }

    /// `try_send` stopped after its claim: the position is taken (and capacity
    /// reserved), the message not yet written. `None` if full or closed. For white-box
    /// tests of a producer descheduled mid-send (`__private::StalledSend`).
    pub(crate) fn half_send(&self, priority: MessagePriority) -> Option<HalfSent<'_>> {
        if self.capacity > 0 && !self.reserve() {
            return None;
        }
        match self.lanes().claim(priority) {
            Some(reserved) => Some(HalfSent {
                shared: self,
                reserved,
                priority,
            }),
            None => {
                if self.capacity > 0 {
                    self.reserved.fetch_sub(1, AcqRel);
                }
                None
            }
        }
    }

    /// Takes one unit of bounded capacity; false if full.
    fn reserve(&self) -> bool {
        let mut n = self.reserved.load(Relaxed);
        loop {
            if n >= self.capacity {
                return false;
            }
            match self
                .reserved
                .compare_exchange_weak(n, n + 1, AcqRel, Relaxed)
            {
                Ok(_) => return true,
                Err(current) => n = current,
            }
        }
    }

    /// A sampled push: `before` messages had entered `priority`'s lane before it.
    #[cold]
    fn sample_received(&self, before: usize, priority: MessagePriority) {
        let sampled = self.sampled();
        let now = self.settings.nanos_since_epoch();
        sampled.last_received.store(now, Relaxed);
        record_max(&sampled.max_len, self.sampled_len(0));
        #[cfg(feature = "metrics")]
        if let Ok(mut mark) = sampled.wait_mark.try_lock() {
            if mark.is_none() {
                let lanes = self.lanes();
                let at = if priority == MessagePriority::Normal && lanes.normal_only() {
                    before
                } else {
                    lanes.pushed().saturating_sub(1)
                };
                *mark = Some((at, now));
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = (before, priority);
    }

    /// The queue length for `max_len`, plus `extra` messages just taken. A snapshot
    /// under concurrency sums lanes read at different moments (and `extra` was already
    /// released from `reserved`), so it can exceed what the queue ever held; a bounded
    /// queue never holds more than `capacity`, so clamp to it.
    fn sampled_len(&self, extra: usize) -> usize {
        let len = self.lanes().len() + extra;
        if self.capacity > 0 {
            len.min(self.capacity)
        } else {
            len
        }
    }

    /// Sends, dead-lettering a refused message: `send` of the seed's API.
    pub(crate) fn send_or_dead_letter(
        &self,
        message: AgentMessage,
        priority: MessagePriority,
    ) -> Result<(), MessagingError> {
        self.try_send(message, priority).map_err(|e| {
            // A refused configuration closed the lanes at creation (checked here, off
            // the send path): nothing was accepted, so nothing is dead-lettered.
            if let Some(config) = self.config_error() {
                return config;
            }
            let err = e.to_error(&self.pid);
            let reason = match &e {
                TrySendError::Full(_) => DeadLetterReason::MailboxFull,
                TrySendError::Closed(_) => DeadLetterReason::MailboxClosed,
            };
            // Sent on the delivery engine's behalf (a custom router): the engine
            // settles it.
            let store = &self.settings.dead_letters;
            if let Err(message) =
                super::handback::park(e.into_inner(), &self.pid, reason.clone(), store)
            {
                store.push(DeadLetter::message(
                    self.pid.clone(),
                    message.disarm(),
                    reason,
                ));
            }
            err
        })
    }

    // ===== receive side =====

    /// Takes the receiver claim.
    #[inline]
    pub(crate) fn claim(&self) -> Result<Claim<'_>, MessagingError> {
        self.receiving
            .compare_exchange(false, true, Acquire, Relaxed)
            .map(|_| Claim(self))
            .map_err(|_| MessagingError::ReceiverBusy(self.pid.clone()))
    }

    /// One attempt to take a message: `Some(Ok)`, `Some(Err(closed))`, or `None` if
    /// there is nothing to take now. A head claimed but still being written (`Busy`,
    /// `Writing`) is waited for a bounded few microseconds (a producer mid-send), never
    /// longer: a producer descheduled mid-send makes this `None`, and a receiver that
    /// sleeps then is woken by that producer's write. `look`: see `LaneRef::pop`.
    ///
    /// Inline, with everything but "a message was ready" out of line, so that a
    /// receive moves the message from its slot to the caller without intermediate copies.
    #[inline]
    pub(crate) fn pop(
        &self,
        claim: &Claim<'_>,
        look: Look,
    ) -> Option<Result<AgentMessage, MessagingError>> {
        // SAFETY: `claim` proves we are the only receiver.
        match unsafe { self.lanes().pop(self.settings.budget, look) } {
            Pop::Msg(message) => {
                self.count_pop();
                Some(Ok(message))
            }
            other => self.pop_slow(claim, other, look),
        }
    }

    /// The rest of [`Shared::pop`], after a first attempt found no message ready.
    #[inline(never)]
    fn pop_slow(
        &self,
        _claim: &Claim<'_>,
        mut popped: Pop<AgentMessage>,
        look: Look,
    ) -> Option<Result<AgentMessage, MessagingError>> {
        let mut spin = BriefSpin::default();
        loop {
            match popped {
                Pop::Msg(message) => {
                    self.count_pop();
                    return Some(Ok(message));
                }
                // The last look before sleeping does not spin: sleeping is its answer.
                Pop::Busy | Pop::Writing if look == Look::Plain && spin.spin() => {}
                Pop::Empty | Pop::Busy | Pop::Writing => {
                    if look == Look::BeforeSleep {
                        self.give_back_memory(_claim);
                    }
                    return None;
                }
                Pop::Closed => {
                    self.give_back_memory(_claim);
                    return Some(Err(self.closed_error()));
                }
            }
            // SAFETY: `_claim` proves we are the only receiver.
            popped = unsafe { self.lanes().pop(self.settings.budget, Look::Plain) };
        }
    }

    /// The receiver found nothing to take and is about to sleep, or the mailbox is
    /// closed and drained: gives back the blocks of every empty lane (module docs,
    /// "Memory").
    #[cold]
    fn give_back_memory(&self, _claim: &Claim<'_>) {
        // SAFETY: `_claim` proves we are the only receiver.
        unsafe { self.lanes().trim() };
    }

    /// What a receive returns once the mailbox is closed and drained.
    fn closed_error(&self) -> MessagingError {
        self.config_error()
            .unwrap_or_else(|| MessagingError::ChannelClosed(self.pid.clone()))
    }

    /// Takes the next message for the close-time drain, waiting through a head that is
    /// still being written (a send whose claim came before the close mark) however long
    /// it takes: that message must reach the dead letters too. `None` once drained.
    fn pop_for_drain(&self, _claim: &Claim<'_>) -> Option<AgentMessage> {
        let busy = SpinWait::default();
        loop {
            // SAFETY: `_claim` proves we are the only receiver.
            match unsafe { self.lanes().pop(self.settings.budget, Look::Plain) } {
                Pop::Msg(message) => {
                    self.count_pop();
                    return Some(message);
                }
                Pop::Busy | Pop::Writing => busy.wait(),
                Pop::Empty | Pop::Closed => return None,
            }
        }
    }

    /// Books one popped message: bounded capacity back, pop count, sampled stats.
    #[inline]
    fn count_pop(&self) {
        // `capacity` lives on the senders' line; read the settings' copy.
        if self.settings.config.max_messages > 0 {
            // SeqCst: the sender that waits for room loads `reserved` with SeqCst
            // after queueing itself, and `wake_a_sender` loads its queue with SeqCst
            // after this (see `backpressure`).
            self.reserved.fetch_sub(1, SeqCst);
            self.wake_a_sender();
        }
        // Only the claim holder writes `pops`: a load and a store suffice.
        let pops = self.pops.load(Relaxed);
        self.pops.store(pops.wrapping_add(1), Relaxed);
        if pops % SAMPLE_EVERY == 0 {
            self.sample_processed(pops);
        }
    }

    /// Called when the receiver comes back for more: closes a sampled processing
    /// interval.
    #[inline]
    pub(crate) fn on_receive_call(&self) {
        let start = self
            .sampled_if_any()
            .map_or(0, |s| s.sample_start.load(Relaxed));
        if start != 0 {
            self.finish_processing_sample(start);
        }
    }

    /// A sampled pop: `pops` messages had been popped before this one.
    #[cold]
    fn sample_processed(&self, pops: usize) {
        let now = self.settings.nanos_since_epoch();
        let sampled = self.sampled();
        sampled.last_processed.store(now, Relaxed);
        sampled.sample_start.store(now, Relaxed);
        record_max(&sampled.max_len, self.sampled_len(1));
        #[cfg(feature = "metrics")]
        if let Ok(mut mark) = sampled.wait_mark.try_lock() {
            // Reached the marked message's place (wrapping compare: `pops >= at`).
            if let Some((at, pushed)) = *mark {
                if pops.wrapping_sub(at) <= usize::MAX / 2 {
                    *mark = None;
                    crate::observe::meters::mailbox_wait(now.saturating_sub(pushed));
                }
            }
        }
        #[cfg(not(feature = "metrics"))]
        let _ = pops;
    }

    #[cold]
    fn finish_processing_sample(&self, start: u64) {
        let sampled = self.sampled();
        sampled.sample_start.store(0, Relaxed);
        let took = self.settings.nanos_since_epoch().saturating_sub(start);
        // Exponential moving average whose weight follows `stats_interval`: a sample
        // counts for took / stats_interval of the average (at least 1/64).
        let interval = self.settings.config.stats_interval.as_nanos().max(1) as f64;
        let weight = (took as f64 / interval).clamp(1.0 / 64.0, 1.0);
        let old = sampled.avg_processing.load(Relaxed);
        let new = if old == 0 {
            took
        } else {
            (old as f64 + (took as f64 - old as f64) * weight) as u64
        };
        sampled.avg_processing.store(new, Relaxed);
    }

    /// Messages handed to a receiver so far (drained dead letters excluded).
    pub(crate) fn processed(&self) -> u64 {
        (self.pops.load(Relaxed) as u64).saturating_sub(self.dead_lettered())
    }

    // ===== close =====

    /// Closes the mailbox: later sends fail, the receiver drains what is queued, then
    /// gets `ChannelClosed`. If no receiver handle is left, drains into dead letters.
    pub(crate) fn close(&self) -> bool {
        self.close_with(DeadLetterReason::MailboxClosed)
    }

    /// [`close`](Self::close), dead-lettering what no receiver is left to drain with
    /// `reason` (an agent stopped by `exit`, a crash or a link).
    pub(crate) fn close_with(&self, reason: DeadLetterReason) -> bool {
        let closed_now = self.lanes().close();
        self.waiter.wake();
        self.wake_all_senders();
        // Pairs with the fence in `release_rx_handle`: one of the two sees the other.
        fence(SeqCst);
        if self.rx_handles.load(Relaxed) == 0 {
            self.drain_to_dead_letters(reason);
        }
        closed_now
    }

    /// Closes the mailbox without draining it: the caller takes what is queued
    /// ([`take_queued`](Self::take_queued)).
    pub(crate) fn close_keeping(&self) {
        self.lanes().close();
        self.waiter.wake();
        self.wake_all_senders();
    }

    /// Called when an `AgentMessage` handle goes away.
    pub(crate) fn release_rx_handle(&self) {
        if self.rx_handles.fetch_sub(1, AcqRel) == 1 {
            if self.detached {
                // Closing with no handle left drains into the dead letters.
                self.close();
                return;
            }
            // The last receiver went down with its thread: the agent crashed. The
            // system's hook stops it (which closes and drains the mailbox).
            if std::thread::panicking() && !self.lanes().is_closed() {
                if let Some(hook) = self.settings.on_crash.get() {
                    (hook.0)(self);
                }
            }
            fence(SeqCst);
            if self.lanes().is_closed() {
                self.drain_to_dead_letters(DeadLetterReason::MailboxClosed);
            }
        }
    }

    /// Takes every queued message of a closed mailbox that no receiver holds (a
    /// crashed agent's), for the system to hand back to the delivery engine. Empty if
    /// a receiver holds the claim.
    pub(crate) fn take_queued(&self) -> Vec<AgentMessage> {
        let mut taken = Vec::new();
        let Ok(claim) = self.claim() else {
            return taken;
        };
        while let Some(Ok(message)) = self.pop(&claim, Look::Plain) {
            taken.push(message);
        }
        taken
    }

    /// Moves every queued message into the dead letters (closed mailboxes only).
    fn drain_to_dead_letters(&self, reason: DeadLetterReason) {
        // If someone holds the claim, that receiver drains instead.
        let Ok(claim) = self.claim() else { return };
        while let Some(message) = self.pop_for_drain(&claim) {
            self.sampled().dead_lettered.fetch_add(1, Relaxed);
            self.settings.dead_letters.push(DeadLetter::message(
                self.pid.clone(),
                message.disarm(),
                reason.clone(),
            ));
        }
        self.give_back_memory(&claim);
    }

    /// Whether a send would be accepted now (a snapshot): open, room left, breaker
    /// closed. Groups use it to pass over members that would refuse.
    pub(crate) fn accepts_now(&self) -> bool {
        !self.lanes().is_closed()
            && (self.capacity == 0 || self.reserved.load(Relaxed) < self.capacity)
            && self.breaker.state() == crate::breaker::BreakerState::Closed
    }

    // ===== stats =====

    pub(crate) fn len(&self) -> usize {
        self.lanes().len()
    }

    pub(crate) fn dead_lettered(&self) -> u64 {
        self.sampled_if_any()
            .map_or(0, |s| s.dead_lettered.load(Relaxed))
    }

    pub(crate) fn max_len(&self) -> usize {
        self.sampled_if_any()
            .map_or(0, |s| s.max_len.load(Relaxed))
            .max(self.sampled_len(0))
    }

    pub(crate) fn last_received(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let stamp = self
            .sampled_if_any()
            .map_or(0, |s| s.last_received.load(Relaxed));
        self.settings.to_utc(stamp)
    }

    pub(crate) fn last_processed(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let stamp = self
            .sampled_if_any()
            .map_or(0, |s| s.last_processed.load(Relaxed));
        self.settings.to_utc(stamp)
    }

    pub(crate) fn average_processing(&self) -> Duration {
        Duration::from_nanos(
            self.sampled_if_any()
                .map_or(0, |s| s.avg_processing.load(Relaxed)),
        )
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: `&mut self`: no producer or receiver is left.
        unsafe { drop_lanes(&mut self.tx, &mut self.rx, &mut self.extra) };
        let p = self.sampled.load(Acquire);
        if !p.is_null() {
            // SAFETY: installed from a `Box`, reachable only through `self`.
            drop(unsafe { Box::from_raw(p) });
        }
        let p = self.send_waiters.load(Acquire);
        if !p.is_null() {
            // SAFETY: installed from a `Box` (`backpressure`), reachable only through
            // `self`.
            drop(unsafe { Box::from_raw(p) });
        }
    }
}
