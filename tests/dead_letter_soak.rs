//! Soak: sustained at-most-once overload into full bounded mailboxes must leave the
//! dead-letter store's memory flat, and every message accounted for.
//!
//! Two producers send 200,000 casts (`AtMostOnce`) round-robin into four mailboxes
//! bounded at 16; one agent's receiver drains now and then, the others never do, so
//! nearly every send is refused and dead-lettered. A counting global allocator (this
//! test binary's own) measures the heap at four checkpoints per producer: once the store
//! is full, the live bytes must stay flat and the store must hold no more than its bound
//! (no RSS reading, no sleeps; bounded by count and by a 60 s watchdog). At the end the
//! counts add up exactly: accepted = delivered + kept + dropped.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use terraphim_agent_messaging::{
    AgentMessage, AgentPid, DeadLetterKind, DeadLetterReason, DeliveryGuarantee, MessagingError,
    RouterConfig, DEFAULT_DEAD_LETTER_CAPACITY,
};

mod common;
use common::sync::{manual_system, registered, within};

// ===== a counting allocator =====

/// The system allocator, counting the bytes live at any moment.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards every call to `System` unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live_bytes() -> isize {
    LIVE.load(Relaxed)
}

// ===== the soak =====

const PRODUCERS: u64 = 2;
const PER_PRODUCER: u64 = 100_000;
const MAILBOXES: usize = 4;
const MAILBOX_CAP: usize = 16;
/// The store's bound: the default.
const STORE_CAP: u64 = DEFAULT_DEAD_LETTER_CAPACITY as u64;
/// Checkpoints per producer at which the heap is measured.
const CHECKPOINTS: u64 = 4;
/// What the heap may move between checkpoints once the store is full: messages in
/// flight and allocator noise, far below the ~50,000 letters a checkpoint refuses.
const SLACK_BYTES: isize = 1 << 20;

#[test]
fn soak_at_most_once_overload_keeps_dead_letters_flat() {
    within(60, || {
        let started = Instant::now();
        let mut config = RouterConfig::default();
        config.delivery_config.guarantee = DeliveryGuarantee::AtMostOnce;
        let (system, _clock) = manual_system(config, MAILBOX_CAP);
        let agents: Vec<_> = (0..MAILBOXES).map(|_| registered(&system)).collect();
        let pids: Arc<Vec<AgentPid>> = Arc::new(agents.iter().map(|(p, _)| p.clone()).collect());

        // One slow receiver: drains agent 0 whenever it gets the core.
        let done = Arc::new(AtomicBool::new(false));
        let receiver = {
            let (mailbox, done) = (agents[0].1.clone(), done.clone());
            thread::spawn(move || {
                let mut received = 0u64;
                while !done.load(SeqCst) {
                    while let Ok(Some(_)) = mailbox.try_receive() {
                        received += 1;
                    }
                    thread::yield_now();
                }
                received
            })
        };

        let start = Arc::new(Barrier::new(PRODUCERS as usize));
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let (system, pids, start) = (system.clone(), pids.clone(), start.clone());
                thread::spawn(move || {
                    start.wait();
                    let (mut ok, mut refused) = (0u64, 0u64);
                    let mut heap = Vec::new();
                    for seq in 0..PER_PRODUCER {
                        let to = &pids[(seq as usize + p as usize) % MAILBOXES];
                        let payload = format!("producer {p} message {seq:>12}");
                        match system.send(to, AgentMessage::cast(AgentPid::nil(), payload)) {
                            Ok(()) => ok += 1,
                            Err(MessagingError::MailboxFull(_)) => refused += 1,
                            Err(e) => panic!("unexpected send error: {e}"),
                        }
                        if (seq + 1) % (PER_PRODUCER / CHECKPOINTS) == 0 {
                            let kept = system.dead_letter_stats().kept;
                            assert!(kept <= STORE_CAP, "{kept} letters kept (bound {STORE_CAP})");
                            heap.push(live_bytes());
                        }
                    }
                    (ok, refused, heap)
                })
            })
            .collect();
        let mut heaps = Vec::new();
        let (mut ok, mut refused) = (0u64, 0u64);
        for producer in producers {
            let (o, r, heap) = producer.join().unwrap();
            ok += o;
            refused += r;
            heaps.push(heap);
        }
        done.store(true, SeqCst);
        let received = receiver.join().unwrap();
        let sent = PRODUCERS * PER_PRODUCER;
        assert_eq!(ok + refused, sent);
        assert!(
            refused > sent / 2,
            "the mailboxes were not overloaded: {refused} of {sent} refused"
        );

        // Memory flat: after the first checkpoint (25,000 sends per producer, so well
        // over the store's bound refused), the heap stays within the slack.
        let after_warm_up: Vec<isize> = heaps.iter().flat_map(|h| h[1..].to_vec()).collect();
        let (low, high) = (
            *after_warm_up.iter().min().unwrap(),
            *after_warm_up.iter().max().unwrap(),
        );
        assert!(
            high - low <= SLACK_BYTES,
            "dead-letter memory grew under overload: heap at checkpoints {heaps:?} \
             (spread {} KiB after warm-up)",
            (high - low) / 1024
        );

        // The ledger adds up: every accepted message is delivered (into a mailbox) or
        // dead-lettered, and nothing is pending under at-most-once.
        let ledger = system.delivery_stats();
        assert_eq!(ledger.total_messages, sent, "{ledger:?}");
        assert_eq!(ledger.delivered, ok, "{ledger:?}");
        assert_eq!(ledger.failed, refused, "{ledger:?}");
        assert_eq!(ledger.pending + ledger.in_transit, 0, "{ledger:?}");
        assert_eq!(system.dead_letter_count(), refused);
        let queued: usize = agents.iter().map(|(_, m)| m.queue_size()).sum();
        assert_eq!(
            received + queued as u64,
            ok,
            "delivered = received + queued"
        );

        // The store kept exactly its bound (the newest letters) and counted the rest:
        // accepted = delivered + kept + dropped, each refusal dropped under its reason.
        let stats = system.dead_letter_stats();
        assert_eq!(stats.recorded, refused, "{stats:?}");
        assert_eq!(stats.kept, STORE_CAP, "{stats:?}");
        assert_eq!(stats.dropped, refused - STORE_CAP, "{stats:?}");
        assert_eq!(
            stats.dropped_by_reason.get(&DeadLetterKind::MailboxFull),
            Some(&stats.dropped)
        );
        assert_eq!(stats.in_subscriptions + stats.taken, 0, "{stats:?}");
        assert_eq!(
            ledger.total_messages,
            ledger.delivered + stats.kept + stats.dropped,
            "accepted = delivered + kept + dropped"
        );
        let dead = system.dead_letters();
        let retained = dead.len() as u64;
        assert_eq!(retained, STORE_CAP);
        assert!(dead
            .iter()
            .all(|d| d.reason == DeadLetterReason::MailboxFull));
        drop(dead);
        let stats = system.dead_letter_stats();
        assert_eq!((stats.kept, stats.taken), (0, STORE_CAP), "{stats:?}");
        println!(
            "soak: {sent} sent, {ok} delivered ({received} received), {refused} refused, \
             {retained} retained, heap spread {} KiB after warm-up, in {:?}",
            (high - low) / 1024,
            started.elapsed()
        );
    });
}
