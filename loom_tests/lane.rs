//! Lane models R1–R3: block recycling, and T1–T4: the receiver giving its blocks back
//! (`trim`) under producers, driven below the mailbox with a consumer that takes one
//! attempt at a time and never spins (two spinning threads would keep loom from ever
//! running a preempted block installer).
//!
//! Under loom a block holds two slots. Every model checks that no value is lost or
//! duplicated, FIFO per sender, and (through `model`) that no block leaks or is freed
//! twice.

use loom::sync::atomic::{AtomicBool, Ordering::SeqCst};
use loom::sync::Arc;
use terraphim_agent_messaging::__private::{LaneModel, Pop};

use crate::{model, spawn};

/// (sender, sequence, token).
type Item = (u8, u8, Arc<()>);

/// One pop attempt; records the message if one was ready.
fn try_pop(lane: &LaneModel<Item>, got: &mut Vec<(u8, u8)>) {
    // SAFETY: the model's body thread is the only consumer.
    if let Pop::Msg((sender, seq, _)) = unsafe { lane.pop() } {
        got.push((sender, seq));
    }
}

/// Pops everything once every producer has returned (so nothing can be Busy).
fn drain(lane: &LaneModel<Item>, got: &mut Vec<(u8, u8)>) {
    loop {
        // SAFETY: single consumer.
        match unsafe { lane.pop() } {
            Pop::Msg((sender, seq, _)) => got.push((sender, seq)),
            Pop::Busy | Pop::Writing => panic!("Busy after every producer returned"),
            Pop::Empty | Pop::Closed => return,
        }
    }
}

/// The sequence numbers received from `sender`, in order.
fn from(got: &[(u8, u8)], sender: u8) -> Vec<u8> {
    got.iter().filter(|t| t.0 == sender).map(|t| t.1).collect()
}

/// A lane with 3 pushed and 2 popped: block 0 is parked as the spare and the tail is
/// at block 1's last slot.
fn primed(token: &Arc<()>) -> (Arc<LaneModel<Item>>, Vec<(u8, u8)>) {
    let lane = Arc::new(LaneModel::new());
    for seq in 0..3 {
        lane.push((9, seq, token.clone())).ok().unwrap();
    }
    let mut got = Vec::new();
    try_pop(&lane, &mut got);
    try_pop(&lane, &mut got);
    assert_eq!(got, [(9, 0), (9, 1)]);
    (lane, got)
}

/// Waits, boundedly (loom must not see an endless spin), for `flag`.
fn wait_for(flag: &AtomicBool) {
    for _ in 0..3 {
        if flag.load(SeqCst) {
            return;
        }
        loom::thread::yield_now();
    }
}

/// R1: both producers ready a block for block 1's last slot (one takes the spare); the
/// loser claims block 2's first slot and parks its unused block, racing the receiver
/// leaving block 1 and parking that.
#[test]
fn r1_unused_block_parked_while_the_receiver_parks() {
    model(|| {
        let token = Arc::new(());
        let (lane, mut got) = primed(&token);
        let producers: Vec<_> = (0..2u8)
            .map(|p| {
                let (lane, token) = (lane.clone(), token.clone());
                spawn(move || lane.push((p, 0, token)).ok().unwrap())
            })
            .collect();
        for _ in 0..3 {
            try_pop(&lane, &mut got);
        }
        for p in producers {
            p.join().unwrap();
        }
        drain(&lane, &mut got);
        let mut all = got.clone();
        all.sort_unstable();
        assert_eq!(all, [(0, 0), (1, 0), (9, 0), (9, 1), (9, 2)], "{got:?}");
        drop(lane);
        assert_eq!(Arc::strong_count(&token), 1);
    });
}

/// R2: a producer readies a block (taking the spare) for the last slot while the lane
/// closes under it and the receiver pops.
#[test]
fn r2_readied_block_parked_on_close() {
    model(|| {
        let token = Arc::new(());
        let (lane, mut got) = primed(&token);
        let (l, t) = (lane.clone(), token.clone());
        let producer = spawn(move || l.push((0, 0, t)).is_ok());
        lane.close();
        try_pop(&lane, &mut got);
        try_pop(&lane, &mut got);
        let accepted = producer.join().unwrap();
        drain(&lane, &mut got);
        assert_eq!(got.len(), 3 + usize::from(accepted), "{got:?}");
        drop(lane);
        assert_eq!(Arc::strong_count(&token), 1);
    });
}

/// R3: producer A can stall between loading the tail and its claim CAS while B crosses
/// two block boundaries and the receiver drains block 0, parks it, and B installs it
/// again as lap 2's block: A must not write into the block it loaded.
#[test]
fn r3_block_recycled_under_a_stalled_producer() {
    model(|| {
        let token = Arc::new(());
        let lane = Arc::new(LaneModel::new());
        lane.push((9, 0, token.clone())).ok().unwrap();
        let b_sent_two = Arc::new(AtomicBool::new(false));
        let drained = Arc::new(AtomicBool::new(false));
        let (la, ta) = (lane.clone(), token.clone());
        let a = spawn(move || la.push((0, 0, ta)).ok().unwrap());
        let (lb, tb) = (lane.clone(), token.clone());
        let (sent_two, done) = (b_sent_two.clone(), drained.clone());
        let b = spawn(move || {
            lb.push((1, 0, tb.clone())).ok().unwrap();
            lb.push((1, 1, tb.clone())).ok().unwrap();
            sent_two.store(true, SeqCst);
            wait_for(&done);
            lb.push((1, 2, tb)).ok().unwrap();
        });
        let mut got = Vec::new();
        wait_for(&b_sent_two);
        try_pop(&lane, &mut got);
        try_pop(&lane, &mut got);
        drained.store(true, SeqCst);
        a.join().unwrap();
        b.join().unwrap();
        drain(&lane, &mut got);
        assert_eq!(got[0], (9, 0));
        assert_eq!(from(&got, 1), [0, 1, 2], "{got:?}");
        assert_eq!(from(&got, 0), [0], "{got:?}");
        drop(lane);
        assert_eq!(Arc::strong_count(&token), 1);
    });
}

// ===== T: trimming =====

/// One trim by the consumer.
fn trim(lane: &LaneModel<Item>) {
    // SAFETY: the model's body thread is the only consumer.
    unsafe { lane.trim() };
}

/// A lane that took `n` messages from sender 9 and handed them all out: empty, with a
/// block (and, past a boundary, a spare).
fn drained(token: &Arc<()>, n: u8) -> Arc<LaneModel<Item>> {
    let lane = Arc::new(LaneModel::new());
    let mut got = Vec::new();
    for seq in 0..n {
        lane.push((9, seq, token.clone())).ok().unwrap();
        try_pop(&lane, &mut got);
    }
    assert_eq!(got.len(), usize::from(n));
    lane
}

/// T1: a push races the consumer trimming the empty lane (its head at a block's last
/// slot, so the push also installs the next block), then looking for the message.
/// The push claims before the trim (which then keeps the block), or its claim fails
/// and it installs a fresh block; a producer stalled between loading the block and
/// its claim must not write into the block the trim freed.
#[test]
fn t1_push_races_trim() {
    model(|| {
        let token = Arc::new(());
        let lane = drained(&token, 1);
        let (l, t) = (lane.clone(), token.clone());
        let producer = spawn(move || l.push((0, 0, t)).ok().unwrap());
        let mut got = Vec::new();
        trim(&lane);
        try_pop(&lane, &mut got);
        producer.join().unwrap();
        drain(&lane, &mut got);
        assert_eq!(got, [(0, 0)]);
        drop(lane);
        assert_eq!(Arc::strong_count(&token), 1);
    });
}

/// T2: two producers race each other into a trimmed lane (one installs the block, the
/// other waits for its claim, or loses the install CAS and keeps its block for later)
/// while the consumer pops and trims again.
#[test]
fn t2_two_pushes_into_a_trimmed_lane() {
    model(|| {
        let token = Arc::new(());
        let lane = drained(&token, 3);
        trim(&lane);
        let producers: Vec<_> = (0..2u8)
            .map(|p| {
                let (l, t) = (lane.clone(), token.clone());
                spawn(move || l.push((p, 0, t)).ok().unwrap())
            })
            .collect();
        let mut got = Vec::new();
        try_pop(&lane, &mut got);
        trim(&lane);
        for p in producers {
            p.join().unwrap();
        }
        drain(&lane, &mut got);
        got.sort_unstable();
        assert_eq!(got, [(0, 0), (1, 0)]);
        drop(lane);
        assert_eq!(Arc::strong_count(&token), 1);
    });
}

/// T3: a push races close and a trim: accepted exactly when it is received, refused
/// pushes install nothing that leaks.
#[test]
fn t3_push_races_close_and_trim() {
    model(|| {
        let token = Arc::new(());
        let lane = drained(&token, 1);
        let (l, t) = (lane.clone(), token.clone());
        let producer = spawn(move || l.push((0, 0, t)).is_ok());
        let l = lane.clone();
        let closing = spawn(move || l.close());
        let mut got = Vec::new();
        trim(&lane);
        try_pop(&lane, &mut got);
        let accepted = producer.join().unwrap();
        closing.join().unwrap();
        drain(&lane, &mut got);
        assert_eq!(got.len(), usize::from(accepted), "{got:?}");
        trim(&lane);
        drop(lane);
        assert_eq!(Arc::strong_count(&token), 1);
    });
}

/// T4: producer A may stall between loading the tail and its claim while B sends, the
/// consumer takes B's message, trims, and sends itself into a fresh block (which may
/// reuse the freed block's address): A must claim in the block of its position, and
/// every message arrives exactly once. (The consumer's send is its
/// consumer's own so that at most one producer waits: two threads spinning would keep
/// loom from running the consumer preempted mid-trim, see the module docs.)
#[test]
fn t4_stalled_producer_across_trim_and_reinstall() {
    model(|| {
        let token = Arc::new(());
        let lane = drained(&token, 2);
        let b_sent = Arc::new(AtomicBool::new(false));
        let (la, ta) = (lane.clone(), token.clone());
        let a = spawn(move || la.push((0, 0, ta)).ok().unwrap());
        let (lb, tb) = (lane.clone(), token.clone());
        let sent = b_sent.clone();
        let b = spawn(move || {
            lb.push((1, 0, tb)).ok().unwrap();
            sent.store(true, SeqCst);
        });
        let mut got = Vec::new();
        wait_for(&b_sent);
        try_pop(&lane, &mut got);
        try_pop(&lane, &mut got);
        trim(&lane);
        lane.push((2, 0, token.clone())).ok().unwrap();
        a.join().unwrap();
        b.join().unwrap();
        drain(&lane, &mut got);
        got.sort_unstable();
        assert_eq!(got, [(0, 0), (1, 0), (2, 0)]);
        drop(lane);
        assert_eq!(Arc::strong_count(&token), 1);
    });
}
