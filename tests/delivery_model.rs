//! Delivery model: proptest op sequences (send, receive/ack, advance, unregister,
//! register, fill) on a manual clock, tallied per message id like jepsen's TotalQueue,
//! and the retry schedule observed through the timer wheel against `RetryPolicy`.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::json;
use terraphim_agent_messaging::*;

mod common;
use common::sync::{manual_system, registered};

const AGENTS: usize = 2;
const CAPACITY: usize = 2;
const MAX_RETRIES: u32 = 3;
const ACK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
enum Op {
    Send {
        agent: usize,
        require_ack: bool,
        same_id: bool,
    },
    Receive {
        agent: usize,
        n: usize,
        ack: bool,
    },
    Advance(u64),
    Unregister {
        agent: usize,
        drop_handle: bool,
    },
    Register(usize),
    Fill(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..AGENTS, any::<bool>(), prop::bool::weighted(0.2)).prop_map(
            |(agent, require_ack, same_id)| Op::Send { agent, require_ack, same_id }
        ),
        3 => (0..AGENTS, 1..4usize, prop::bool::weighted(0.7))
            .prop_map(|(agent, n, ack)| Op::Receive { agent, n, ack }),
        3 => prop::sample::select(vec![1u64, 50, 100, 1000, 30_000]).prop_map(Op::Advance),
        1 => (0..AGENTS, any::<bool>())
            .prop_map(|(agent, drop_handle)| Op::Unregister { agent, drop_handle }),
        1 => (0..AGENTS).prop_map(Op::Register),
        1 => (0..AGENTS).prop_map(Op::Fill),
    ]
}

/// What happened to one message id.
#[derive(Debug, Default)]
struct Tally {
    /// Accepted sends of this id (`Ok` or `Err`).
    sends: u32,
    require_ack: bool,
    /// Copies taken out of a mailbox.
    received: u32,
    /// Copies dead-lettered by a mailbox that closed with no receiver.
    copy_dead: u32,
    /// `acknowledge` returned `Ok`.
    acked: u32,
    /// Router dead letters (the message given up on), with their reasons.
    given_up: Vec<DeadLetterReason>,
    /// No copy may be received before this instant (refused first attempt + retry_delay).
    not_before: Option<Instant>,
}

struct Agent {
    pid: AgentPid,
    current: Option<AgentMailbox>,
    /// Handles of earlier (closed) mailboxes, still to be drained.
    old: Vec<AgentMailbox>,
    registered: bool,
}

struct Model {
    guarantee: DeliveryGuarantee,
    system: MessageSystem,
    clock: ManualClock,
    agents: Vec<Agent>,
    tally: HashMap<MessageId, Tally>,
    last: Option<MessageEnvelope>,
    next_seq: u64,
    /// Resend an id only once every earlier send of it has settled (works around the
    /// known bug of `resend_while_retrying_is_not_lost`).
    settle_before_resend: bool,
}

fn model(guarantee: DeliveryGuarantee) -> Model {
    let mut config = RouterConfig::default();
    let d = &mut config.delivery_config;
    d.guarantee = guarantee;
    d.max_retries = MAX_RETRIES;
    d.retry_delay = Duration::from_millis(100);
    d.retry_backoff_multiplier = 2.0;
    d.max_retry_delay = Duration::from_secs(1);
    d.acknowledgment_timeout = ACK_TIMEOUT;
    // The exactly-once window outlives every run (≤ 50 ops × 30 s + the final drain).
    d.cleanup_interval = Duration::from_secs(24 * 3600);
    let (system, clock) = manual_system(config, CAPACITY);
    let agents = (0..AGENTS)
        .map(|_| {
            let (pid, mailbox) = registered(&system);
            Agent {
                current: Some(mailbox),
                pid,
                old: Vec::new(),
                registered: true,
            }
        })
        .collect();
    Model {
        guarantee,
        system,
        clock,
        agents,
        tally: HashMap::new(),
        last: None,
        next_seq: 0,
        settle_before_resend: true,
    }
}

/// Whether `id`'s copies are tracked until acked (only envelopes under a retrying
/// guarantee).
fn acked_kind(g: DeliveryGuarantee, t: &Tally) -> bool {
    t.require_ack && g != DeliveryGuarantee::AtMostOnce
}

impl Model {
    fn step(&mut self, op: &Op) {
        match *op {
            Op::Send {
                agent,
                require_ack,
                same_id,
            } => self.send(agent, require_ack, same_id),
            Op::Receive { agent, n, ack } => self.receive(agent, n, ack),
            Op::Advance(ms) => {
                self.clock.advance(Duration::from_millis(ms));
                self.system.run_due_timers();
                let dead = self.system.dead_letters();
                self.given_up(dead, "advance");
            }
            Op::Unregister { agent, drop_handle } => {
                let a = &mut self.agents[agent];
                let r = self.system.unregister_agent(&a.pid);
                if !a.registered {
                    assert!(matches!(r, Err(MessagingError::AgentNotFound(_))), "{r:?}");
                    return;
                }
                r.unwrap();
                a.registered = false;
                let handle = a.current.take().expect("registered agents have a handle");
                if drop_handle {
                    drop(handle);
                    // Every copy still queued is dead-lettered by the mailbox.
                    for d in self.system.dead_letters() {
                        assert_eq!(d.reason, DeadLetterReason::MailboxClosed, "{d:?}");
                        if let Some(t) = self.tally.get_mut(&d.id) {
                            t.copy_dead += 1;
                        } // else a filler
                    }
                } else {
                    a.old.push(handle);
                    assert!(self.system.dead_letters().is_empty());
                }
            }
            Op::Register(agent) => {
                let a = &mut self.agents[agent];
                let r = self.system.register_agent(a.pid.clone());
                if a.registered {
                    assert!(matches!(r, Err(MessagingError::DuplicateAgent(_))), "{r:?}");
                } else {
                    r.unwrap();
                    a.registered = true;
                    a.current = self.system.get_mailbox(&a.pid);
                    assert!(a.current.as_ref().unwrap().is_empty());
                }
            }
            Op::Fill(agent) => {
                if let Some(mb) = &self.agents[agent].current {
                    while mb
                        .try_send(
                            AgentMessage::cast(AgentPid::nil(), "filler"),
                            MessagePriority::Normal,
                        )
                        .is_ok()
                    {}
                    assert_eq!(mb.queue_size(), CAPACITY);
                }
            }
        }
        self.check_invariants(false);
    }

    fn send(&mut self, agent: usize, require_ack: bool, same_id: bool) {
        let settled = |m: &Self, e: &MessageEnvelope| {
            let t = &m.tally[&e.id];
            let ended = if acked_kind(m.guarantee, t) {
                t.acked + t.given_up.len() as u32
            } else {
                t.received + t.copy_dead + t.given_up.len() as u32
            };
            !m.settle_before_resend || ended >= t.sends
        };
        let envelope = match (&self.last, same_id) {
            (Some(last), true) if settled(self, last) => last.clone(),
            _ => {
                let a = &self.agents[agent];
                let mut e = MessageEnvelope::new(
                    a.pid.clone(),
                    "job".into(),
                    json!({ "seq": self.next_seq }),
                    DeliveryOptions::default(),
                );
                self.next_seq += 1;
                e.delivery_options.require_ack = require_ack;
                e
            }
        };
        self.last = Some(envelope.clone());
        let target = self
            .agents
            .iter()
            .find(|a| a.pid == envelope.to)
            .expect("sent to a model agent");
        let registered = target.registered;
        let full = target.current.as_ref().map_or(0, |m| m.queue_size()) >= CAPACITY;
        let id = envelope.id.clone();
        let t = self.tally.entry(id.clone()).or_default();
        // Exactly-once: an id already pushed is a duplicate, whatever the destination's
        // state (resends happen only once earlier sends settled).
        let surely_duplicate =
            self.guarantee == DeliveryGuarantee::ExactlyOnce && t.received + t.copy_dead > 0;
        let sent_before = t.sends > 0;
        t.sends += 1;
        t.require_ack = envelope.delivery_options.require_ack;
        t.not_before = None;
        let duplicates_before = self.system.delivery_stats().duplicates;
        let result = self.system.send_message(envelope);
        // A copy still in a mailbox (or pushed by a retry the model did not see) makes
        // a resend a duplicate too: read it off the ledger, but only for a resent id.
        let suppressed = self.system.delivery_stats().duplicates > duplicates_before;
        assert!(
            !suppressed || sent_before,
            "a first send counted as a duplicate"
        );
        assert!(
            !surely_duplicate || suppressed,
            "a received id was pushed again"
        );
        let duplicate = surely_duplicate || suppressed;
        let dead = self.system.dead_letters();
        // The first attempt's outcome is known to the model.
        match (&result, registered, full, self.guarantee) {
            (Ok(()), _, _, _) if duplicate => {}
            (Err(MessagingError::AgentNotFound(_)), false, _, _) => {}
            (Err(MessagingError::MailboxFull(_)), true, true, DeliveryGuarantee::AtMostOnce) => {}
            (Ok(()), true, true, _) if self.guarantee != DeliveryGuarantee::AtMostOnce => {
                let t = self.tally.get_mut(&id).unwrap();
                if t.sends == 1 {
                    assert!(!duplicate);
                    t.not_before = Some(self.clock.now() + Duration::from_millis(100));
                }
            }
            (Ok(()), true, false, _) => {}
            other => panic!("send: unexpected {other:?}"),
        }
        // An `Err` is dead-lettered at once, with a matching reason; an `Ok` is not.
        match &result {
            Ok(()) => assert!(dead.is_empty(), "{dead:?}"),
            Err(e) => {
                assert_eq!(dead.len(), 1, "{dead:?}");
                assert_eq!(dead[0].id, id);
                assert_eq!(dead[0].attempts, 1);
                let expected = match e {
                    MessagingError::AgentNotFound(_) => DeadLetterReason::AgentNotFound,
                    MessagingError::MailboxFull(_) => DeadLetterReason::MailboxFull,
                    other => panic!("unexpected error {other:?}"),
                };
                assert_eq!(dead[0].reason, expected);
            }
        }
        self.given_up(dead, "send");
    }

    fn receive(&mut self, agent: usize, n: usize, ack: bool) {
        let now = self.clock.now();
        let a = &mut self.agents[agent];
        let mut got = Vec::new();
        while got.len() < n {
            if let Some(old) = a.old.first() {
                match old.try_receive() {
                    Ok(Some(m)) => got.push(m),
                    Ok(None) => panic!("a closed mailbox is never merely empty"),
                    Err(MessagingError::ChannelClosed(_)) => {
                        a.old.remove(0);
                    }
                    Err(e) => panic!("{e:?}"),
                }
                continue;
            }
            match a.current.as_ref().map(|m| m.try_receive()) {
                Some(Ok(Some(m))) => got.push(m),
                Some(Ok(None)) | None => break,
                Some(Err(e)) => panic!("{e:?}"),
            }
        }
        assert!(self.system.dead_letters().is_empty());
        for m in got {
            if m.payload::<&str>() == Some(&"filler") {
                continue;
            }
            let id = m.id().clone();
            let g = self.guarantee;
            let t = self
                .tally
                .get_mut(&id)
                .unwrap_or_else(|| panic!("received an id never sent: {id}"));
            t.received += 1;
            if let Some(nb) = t.not_before {
                assert!(now >= nb, "a retry arrived before retry_delay");
            }
            if ack && acked_kind(g, t) {
                match self.system.acknowledge(&id) {
                    Ok(()) => t.acked += 1,
                    Err(MessagingError::UnknownMessage(_)) => {}
                    Err(e) => panic!("{e:?}"),
                }
            }
        }
    }

    fn given_up(&mut self, dead: Vec<DeadLetter>, during: &str) {
        for d in dead {
            assert!(
                d.attempts >= 1 && d.attempts <= 1 + MAX_RETRIES,
                "{during}: {d:?}"
            );
            match &d.reason {
                DeadLetterReason::RetriesExhausted(_)
                | DeadLetterReason::NotAcknowledged
                | DeadLetterReason::CircuitOpen => {
                    assert_eq!(d.attempts, 1 + MAX_RETRIES, "{during}: {d:?}")
                }
                DeadLetterReason::Expired
                | DeadLetterReason::AgentNotFound
                | DeadLetterReason::MailboxFull
                | DeadLetterReason::MailboxClosed => {}
                other => panic!("{during}: unexpected reason {other:?}"),
            }
            let t = self
                .tally
                .get_mut(&d.id)
                .unwrap_or_else(|| panic!("{during}: dead letter for an unknown id {d:?}"));
            t.given_up.push(d.reason);
        }
    }

    /// The TotalQueue tally; `done`: nothing may be pending any more.
    fn check_invariants(&self, done: bool) {
        let g = self.guarantee;
        let copies_per_send = 1 + MAX_RETRIES;
        let (mut pushed, mut acked, mut failed, mut expired, mut outcomes, mut sends) =
            (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
        for (id, t) in &self.tally {
            let copies = t.received + t.copy_dead;
            let given_up = t.given_up.len() as u32;
            sends += u64::from(t.sends);
            failed += t
                .given_up
                .iter()
                .filter(|r| **r != DeadLetterReason::Expired)
                .count() as u64;
            expired += t
                .given_up
                .iter()
                .filter(|r| **r == DeadLetterReason::Expired)
                .count() as u64;
            if g == DeliveryGuarantee::ExactlyOnce {
                assert!(copies <= 1, "{id}: exactly-once delivered twice: {t:?}");
            }
            let ended = if acked_kind(g, t) {
                // One terminal outcome per send: acknowledged or given up.
                assert!(
                    copies <= t.sends * copies_per_send,
                    "{id}: more than 1 + max_retries copies: {t:?}"
                );
                acked += u64::from(t.acked);
                t.acked + given_up
            } else {
                // One copy or one dead letter per send.
                pushed += u64::from(copies);
                copies + given_up
            };
            assert!(ended <= t.sends, "{id}: more outcomes than sends: {t:?}");
            if done {
                match g {
                    DeliveryGuarantee::ExactlyOnce => {
                        assert!(ended >= 1, "{id}: lost: {t:?}")
                    }
                    _ => assert_eq!(ended, t.sends, "{id}: lost: {t:?}"),
                }
            }
            outcomes += u64::from(ended);
        }
        let s = self.system.delivery_stats();
        assert_eq!(s.total_messages, sends, "{s:?}");
        assert_eq!(
            s.total_messages,
            s.delivered
                + s.acknowledged
                + s.failed
                + s.expired
                + s.duplicates
                + s.pending
                + s.in_transit,
            "ledger: {s:?}"
        );
        // Copies of acked-kind messages are pushes, not deliveries; some copies may still
        // sit in a mailbox.
        if done {
            assert_eq!(s.delivered, pushed, "{s:?}");
        } else {
            assert!(s.delivered >= pushed, "{s:?}");
        }
        assert_eq!(s.acknowledged, acked, "{s:?}");
        assert_eq!(s.failed, failed, "{s:?}");
        assert_eq!(s.expired, expired, "{s:?}");
        if g != DeliveryGuarantee::ExactlyOnce {
            assert_eq!(s.duplicates, 0, "{s:?}");
        }
        if g == DeliveryGuarantee::AtMostOnce {
            assert_eq!(s.pending + s.in_transit, 0, "{s:?}");
            assert_eq!(s.total_attempts, s.total_messages, "never retried: {s:?}");
        }
        if done {
            assert_eq!(s.pending + s.in_transit, 0, "{s:?}");
            assert_eq!(outcomes + s.duplicates, sends, "{s:?}");
        }
    }

    /// Drains every mailbox (no acks) and lets every timer run out.
    fn finish(&mut self) {
        for _ in 0..100 {
            for agent in 0..AGENTS {
                self.receive(agent, usize::MAX, false);
            }
            let s = self.system.delivery_stats();
            if s.pending + s.in_transit == 0 {
                break;
            }
            self.step(&Op::Advance(30_000));
        }
        for agent in 0..AGENTS {
            self.receive(agent, usize::MAX, false);
        }
        self.check_invariants(true);
    }
}

fn run(guarantee: DeliveryGuarantee, ops: &[Op]) {
    run_with(guarantee, ops, true);
}

fn run_with(guarantee: DeliveryGuarantee, ops: &[Op], settle_before_resend: bool) {
    let mut m = model(guarantee);
    m.settle_before_resend = settle_before_resend;
    for op in ops {
        m.step(op);
    }
    m.finish();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn model_at_most_once(ops in prop::collection::vec(op(), 1..50)) {
        run(DeliveryGuarantee::AtMostOnce, &ops);
    }

    #[test]
    fn model_at_least_once(ops in prop::collection::vec(op(), 1..50)) {
        run(DeliveryGuarantee::AtLeastOnce, &ops);
    }

    #[test]
    fn model_exactly_once(ops in prop::collection::vec(op(), 1..50)) {
        run(DeliveryGuarantee::ExactlyOnce, &ops);
    }

    /// The models above, resending an id while an earlier send of it is still tracked.
    #[test]
    fn model_resend_while_tracked(
        g in prop::sample::select(vec![DeliveryGuarantee::AtLeastOnce, DeliveryGuarantee::ExactlyOnce]),
        ops in prop::collection::vec(op(), 1..50),
    ) {
        run_with(g, &ops, false);
    }
}

// ===== regressions found by the model =====

fn send(same: bool, ack: bool) -> Op {
    Op::Send {
        agent: 0,
        require_ack: ack,
        same_id: same,
    }
}

/// Same id sent twice while the first copy waits for a retry (mailbox full): the table
/// says at-least-once delivers it twice, and the ledger must count both sends. The
/// tracker keys entries by id, so the second `track` replaces (and drops) the first.
#[test]
fn resend_while_retrying_is_not_lost() {
    run_with(
        DeliveryGuarantee::AtLeastOnce,
        &[Op::Fill(0), send(false, false), send(true, false)],
        false,
    );
}

/// Exactly-once: the second send is a duplicate, so `duplicates` must count it (or the
/// ledger misses a message).
#[test]
fn exactly_once_resend_while_retrying_adds_up() {
    run_with(
        DeliveryGuarantee::ExactlyOnce,
        &[Op::Fill(0), send(false, false), send(true, false)],
        false,
    );
}

/// Same id sent again while the first copy awaits its ack.
#[test]
fn resend_while_awaiting_ack_adds_up() {
    run_with(
        DeliveryGuarantee::AtLeastOnce,
        &[send(false, true), send(true, false)],
        false,
    );
}

// ===== the retry schedule, observed on the wheel =====

/// Several messages refused by a full mailbox at different times: each fires exactly
/// `max_retries` retries, at `sent + delay(0) + … + delay(k)`, and is then
/// dead-lettered with `1 + max_retries` attempts. Every timer deadline the wheel reports
/// is one of the expected retry instants (one timer per message, none shared).
fn retry_schedule(
    retry_delay_ms: u64,
    multiplier: f64,
    max_delay_ms: u64,
    max_retries: u32,
    offsets_ms: &[u64],
) {
    let mut config = RouterConfig::default();
    let d = &mut config.delivery_config;
    d.max_retries = max_retries;
    d.retry_delay = Duration::from_millis(retry_delay_ms);
    d.retry_backoff_multiplier = multiplier;
    d.max_retry_delay = Duration::from_millis(max_delay_ms);
    let policy = RetryPolicy::from_config(d).unwrap();
    let (system, clock) = manual_system(config, 1);
    let start = clock.now();
    let (pid, _mailbox) = registered(&system);
    system
        .send(&pid, AgentMessage::cast(AgentPid::nil(), "blocker"))
        .unwrap();
    // Backoff from the policy: non-decreasing, capped, never zero.
    let delays: Vec<u64> = (0..max_retries)
        .map(|k| {
            let delay = policy.delay(k);
            assert!(!delay.is_zero());
            assert!(delay <= Duration::from_millis(max_delay_ms));
            if k > 0 {
                assert!(delay >= policy.delay(k - 1), "backoff decreased at {k}");
            }
            delay.as_millis() as u64
        })
        .collect();
    // Expected retry instants, in ms since start: (instant, message index).
    let mut expected: Vec<(u64, usize)> = Vec::new();
    let mut ids = Vec::new();
    let mut offsets = offsets_ms.to_vec();
    offsets.sort_unstable();
    for (i, &off) in offsets.iter().enumerate() {
        let now_ms = (clock.now() - start).as_millis() as u64;
        clock.advance(Duration::from_millis(off - now_ms));
        let options = DeliveryOptions {
            timeout: Duration::from_secs(365 * 24 * 3600),
            ..DeliveryOptions::default()
        };
        let e = MessageEnvelope::new(pid.clone(), "job".into(), json!(i), options);
        ids.push(e.id.clone());
        system.send_message(e).unwrap();
        let mut at = off;
        for &delay in &delays {
            at += delay;
            expected.push((at, i));
        }
        // Nothing fires in between sends that is not due (offsets are before any retry).
        system.run_due_timers();
    }
    expected.sort_unstable();
    let mut retries_seen = 0;
    let mut fired: HashMap<u64, usize> = HashMap::new();
    // Jump from deadline to deadline.
    for _ in 0..10_000 {
        let Some(next) = system.run_due_timers() else {
            break;
        };
        let next_ms = (next - start).as_millis() as u64;
        assert!(
            expected.iter().any(|&(at, _)| at == next_ms),
            "a timer at {next_ms} ms matches no retry: {expected:?}"
        );
        clock.set(next);
        let before = system.get_stats().0.retry_attempts;
        system.run_due_timers();
        let after = system.get_stats().0.retry_attempts;
        *fired.entry(next_ms).or_default() += (after - before) as usize;
        retries_seen = after;
    }
    assert_eq!(retries_seen, u64::from(max_retries) * offsets.len() as u64);
    let mut want: HashMap<u64, usize> = HashMap::new();
    for &(at, _) in &expected {
        *want.entry(at).or_default() += 1;
    }
    assert_eq!(fired, want, "retries fired at the wrong instants");
    let dead = system.dead_letters();
    assert_eq!(dead.len(), offsets.len());
    let dead_ids: HashSet<_> = dead.iter().map(|d| d.id.clone()).collect();
    assert_eq!(dead_ids, ids.into_iter().collect::<HashSet<_>>());
    for d in &dead {
        assert_eq!(d.attempts, 1 + max_retries, "{d:?}");
        assert!(matches!(d.reason, DeadLetterReason::RetriesExhausted(_)));
    }
    let s = system.delivery_stats();
    assert_eq!(s.pending + s.in_transit, 0);
    assert_eq!(s.failed, offsets.len() as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn retry_timers_follow_the_backoff(
        retry_delay_ms in 1u64..200,
        multiplier in prop::sample::select(vec![1.0f64, 1.5, 2.0, 3.0, 10.0]),
        max_delay_ms in 1u64..2000,
        max_retries in 1u32..8,
        offsets_ms in prop::collection::vec(0u64..5, 1..4),
    ) {
        // Every send happens before the first retry is due: that is the first delay,
        // which the cap may make shorter than `retry_delay` (found by proptest:
        // retry_delay 2 ms, cap 1 ms, a send at 1 ms met the first retry).
        let first_delay_ms = retry_delay_ms.min(max_delay_ms);
        let offsets_ms: Vec<u64> = offsets_ms.iter().map(|o| o % first_delay_ms).collect();
        // Whole-millisecond delays keep the model exact (1 tick = 1 ms): with a
        // fractional multiplier the product may not be whole, so only check those
        // whose delays are.
        let config = DeliveryConfig {
            retry_delay: Duration::from_millis(retry_delay_ms),
            retry_backoff_multiplier: multiplier,
            max_retry_delay: Duration::from_millis(max_delay_ms),
            ..DeliveryConfig::default()
        };
        let policy = RetryPolicy::from_config(&config).unwrap();
        prop_assume!((0..max_retries).all(|k| policy.delay(k).subsec_nanos() % 1_000_000 == 0));
        retry_schedule(retry_delay_ms, multiplier, max_delay_ms, max_retries, &offsets_ms);
    }
}

#[test]
fn retry_schedule_regressions() {
    // Up to the cap, then flat.
    retry_schedule(100, 2.0, 400, 5, &[0, 1, 3]);
    retry_schedule(5, 2.0, 1000, 1, &[0]);
    retry_schedule(7, 1.0, 7, 3, &[0, 0, 6]);
    // A cap below `retry_delay`: the first retry comes after the cap.
    retry_schedule(2, 1.0, 1, 1, &[0, 0]);
}

/// `max_retries: 0` means the first attempt is the only one: a refused message is
/// dead-lettered after one attempt, never retried.
#[test]
fn max_retries_zero_is_never_retried() {
    retry_schedule(10, 2.0, 1000, 0, &[0]);
}
