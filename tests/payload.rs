//! Payloads through the system: every value is dropped exactly once on every path a
//! message takes (mailbox, call, reply, envelope, dead letters, timers, shutdown with
//! messages queued), stored inline or boxed; `take` moves a value out without dropping
//! it; and casting, receiving and taking a `u64` allocates nothing once a mailbox's
//! lane blocks are warm.
//!
//! The kinds of value: one word and exactly three words (inline), ten words and a
//! 16-aligned word (boxed), and a zero-sized type (inline, counted by a static of its
//! own, so only one test uses it).

mod common;

use std::any::Any;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use serde_json::json;
use terraphim_agent_messaging::{
    AgentMailbox, AgentMessage, AgentPid, DeadMessage, DeliveryGuarantee, DeliveryOptions,
    MailboxConfig, MessageEnvelope, MessagePriority, MessageSystem, MessagingError, Payload,
    RouterConfig, TypedMessage,
};

use common::sync::{manual_system, register, registered, within};

#[global_allocator]
static ALLOCATOR: common::alloc::Counting = common::alloc::Counting;

const TIMEOUT: Duration = Duration::from_secs(10);

// ===== values that count their drops =====

/// Adds one to its counter when dropped; every kind below holds one.
struct Tracker(Arc<AtomicUsize>);

impl Drop for Tracker {
    fn drop(&mut self) {
        self.0.fetch_add(1, SeqCst);
    }
}

/// One word: inline.
struct OneWord(#[allow(dead_code)] Tracker);

/// Exactly the inline capacity: inline.
struct ThreeWords(#[allow(dead_code)] Tracker, #[allow(dead_code)] [u64; 2]);

/// Ten words: boxed.
struct TenWords(#[allow(dead_code)] Tracker, #[allow(dead_code)] [u64; 9]);

/// One word aligned to 16: boxed whatever its size.
#[repr(align(16))]
struct Aligned16(#[allow(dead_code)] Tracker);

/// Drops of [`ZeroSized`] values, in the one test that makes them.
static ZERO_SIZED_DROPS: AtomicUsize = AtomicUsize::new(0);

/// No bytes at all: inline (and `Box::new` of it allocates nothing either).
struct ZeroSized;

impl Drop for ZeroSized {
    fn drop(&mut self) {
        ZERO_SIZED_DROPS.fetch_add(1, SeqCst);
    }
}

/// Makes values of one kind and counts their drops.
struct Kind<T> {
    name: &'static str,
    make: Box<dyn Fn() -> T>,
    drops: Box<dyn Fn() -> usize>,
}

impl<T: Any + Send> Kind<T> {
    fn counted(name: &'static str, wrap: fn(Tracker) -> T) -> Kind<T> {
        let count = Arc::new(AtomicUsize::new(0));
        let made = count.clone();
        Kind {
            name,
            make: Box::new(move || wrap(Tracker(made.clone()))),
            drops: Box::new(move || count.load(SeqCst)),
        }
    }

    fn make(&self) -> T {
        (self.make)()
    }

    fn drops(&self) -> usize {
        (self.drops)()
    }

    /// Runs `f`, then checks that it dropped `n` values of this kind.
    fn expect_drops(&self, n: usize, what: &str, f: impl FnOnce()) {
        let before = self.drops();
        f();
        assert_eq!(self.drops() - before, n, "{}: {what}", self.name);
    }
}

/// Runs `path` for every kind but the zero-sized one (see `zero_sized_on_every_path`).
fn for_each_kind(path: fn(&dyn Any)) {
    path(&Kind::counted("one word", OneWord));
    path(&Kind::counted("three words", |t| ThreeWords(t, [0; 2])));
    path(&Kind::counted("ten words", |t| TenWords(t, [0; 9])));
    path(&Kind::counted("aligned to 16", Aligned16));
}

/// `for_each_kind`'s paths take `&dyn Any` (a `Kind<T>` of any `T`); each path is a
/// generic function instantiated for the five kinds by this macro.
macro_rules! paths {
    ($($name:ident => $generic:ident;)*) => {$(
        fn $name(kind: &dyn Any) {
            if let Some(k) = kind.downcast_ref::<Kind<OneWord>>() {
                $generic(k)
            } else if let Some(k) = kind.downcast_ref::<Kind<ThreeWords>>() {
                $generic(k)
            } else if let Some(k) = kind.downcast_ref::<Kind<TenWords>>() {
                $generic(k)
            } else if let Some(k) = kind.downcast_ref::<Kind<Aligned16>>() {
                $generic(k)
            } else if let Some(k) = kind.downcast_ref::<Kind<ZeroSized>>() {
                $generic(k)
            } else {
                unreachable!("a kind of this file")
            }
        }
    )*};
}

paths! {
    mailbox => mailbox_path;
    call => call_path;
    reply => reply_path;
    dead_letters => dead_letter_path;
    timers => timer_path;
    typed => typed_path;
}

fn cast<T: Any + Send>(kind: &Kind<T>) -> AgentMessage {
    AgentMessage::cast(AgentPid::nil(), kind.make())
}

// ===== the paths =====

/// Through a standalone mailbox: received and dropped, received and taken (the value
/// outlives its message), left queued when the mailbox goes.
fn mailbox_path<T: Any + Send>(kind: &Kind<T>) {
    kind.expect_drops(3, "mailbox", || {
        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        for _ in 0..3 {
            mailbox.send(cast(kind)).unwrap();
        }
        let first = mailbox.try_receive().unwrap().unwrap();
        let AgentMessage::Cast { payload, .. } = &first else {
            panic!("a cast")
        };
        assert_eq!(
            payload.is_inline(),
            Payload::fits_inline::<T>(),
            "{}",
            kind.name
        );
        assert!(first.payload::<T>().is_some());
        kind.expect_drops(1, "a received message", || drop(first));

        let AgentMessage::Cast { payload, .. } = mailbox.try_receive().unwrap().unwrap() else {
            panic!("a cast")
        };
        let value: T = kind_take(kind, payload);
        kind.expect_drops(1, "the value taken", || drop(value));

        kind.expect_drops(1, "the message left queued", || drop(mailbox));
    });
}

/// `take`s the value, checking that taking drops nothing.
fn kind_take<T: Any + Send>(kind: &Kind<T>, payload: Payload) -> T {
    let before = kind.drops();
    let value = payload.take::<T>().expect("a T");
    assert_eq!(kind.drops(), before, "{}: take moves", kind.name);
    value
}

/// A call through the system, answered by an agent on another thread that echoes the
/// request, in the three shapes the crate offers: `call` (the reply's `take`),
/// `call_typed`, and a hand-built call whose callee replies the seed's way
/// (`reply_to.send(Box::new(..))`) and whose caller `downcast`s.
fn call_path<T: Any + Send>(kind: &Kind<T>) {
    let before = kind.drops();
    // `Kind` is not `Send` (its closures need not be): only the values cross threads,
    // and the counting happens on this side.
    let (a, b, c) = within(30, {
        let system = MessageSystem::new(RouterConfig::default());
        let (client, server) = (AgentPid::new(), AgentPid::new());
        system.register_agent(server.clone()).unwrap();
        let mailbox = system.get_mailbox(&server).unwrap();
        let echo = thread::spawn(move || {
            while let Ok(message) = mailbox.receive() {
                if let AgentMessage::Call {
                    payload, reply_to, ..
                } = message
                {
                    // Boxed payloads go back in their box; inline ones the seed's way
                    // too, through a fresh `Box::new`, to cover `From<Box<T>>`.
                    match payload.take::<T>() {
                        Ok(value) => reply_to.send(Box::new(value)).ok(),
                        Err(other) => reply_to.send(other).ok(),
                    };
                }
            }
        });
        let (a, b, c) = (kind.make(), kind.make(), kind.make());
        move || {
            let reply = system.call(client.clone(), &server, a, TIMEOUT).unwrap();
            let a: T = reply.take().expect("the request back");
            let b: T = system
                .call_typed(client.clone(), &server, b, TIMEOUT)
                .unwrap();
            let (call, reply) = AgentMessage::call(client.clone(), c, TIMEOUT);
            system.send(&server, call).unwrap();
            let c: Box<T> = reply.recv().unwrap().downcast().expect("a T");
            system.shutdown().unwrap();
            echo.join().unwrap();
            (a, b, c)
        }
    });
    assert_eq!(
        kind.drops(),
        before,
        "{}: nothing dropped on the way",
        kind.name
    );
    kind.expect_drops(3, "the three requests, back", || drop((a, b, c)));
}

/// Replies that nobody receives: handed back to the replier when the caller has gone,
/// or dropped with the reply slot when the caller goes after the reply arrived.
fn reply_path<T: Any + Send>(kind: &Kind<T>) {
    kind.expect_drops(1, "a request dropped with its call", || {
        let (call, _reply) = AgentMessage::call(AgentPid::nil(), kind.make(), TIMEOUT);
        drop(call);
    });
    kind.expect_drops(1, "a reply handed back", || {
        let (call, reply) = AgentMessage::call(AgentPid::nil(), 0u8, TIMEOUT);
        drop(reply);
        let AgentMessage::Call { reply_to, .. } = call else {
            panic!("a call")
        };
        let back = reply_to.send(Payload::new(kind.make())).unwrap_err();
        assert!(back.is::<T>());
        drop(back);
    });
    kind.expect_drops(1, "a reply never received", || {
        let (call, reply) = AgentMessage::call(AgentPid::nil(), 0u8, TIMEOUT);
        let AgentMessage::Call { reply_to, .. } = call else {
            panic!("a call")
        };
        reply_to.send(Payload::new(kind.make())).unwrap();
        drop(reply);
    });
    kind.expect_drops(1, "a reply received by value", || {
        let (call, reply) = AgentMessage::call(AgentPid::nil(), 0u8, TIMEOUT);
        let AgentMessage::Call { reply_to, .. } = call else {
            panic!("a call")
        };
        reply_to.send(Box::new(kind.make())).unwrap();
        let value: T = kind_take(kind, reply.recv().unwrap());
        drop(value);
    });
}

/// Dead letters: refused by a full mailbox (at most once), queued when the agent was
/// unregistered, and queued at shutdown; each kept in the store until drained or the
/// system dropped.
fn dead_letter_path<T: Any + Send>(kind: &Kind<T>) {
    let mut config = RouterConfig::default();
    config.delivery_config.guarantee = DeliveryGuarantee::AtMostOnce;
    kind.expect_drops(4, "dead letters", || {
        let (system, _clock) = manual_system(config, 1);
        let full = register(&system);
        system.send(&full, cast(kind)).unwrap();
        let refused = system.send(&full, cast(kind)).unwrap_err();
        assert!(matches!(refused, MessagingError::MailboxFull(_)));
        let closing = register(&system);
        system.send(&closing, cast(kind)).unwrap();
        kind.expect_drops(0, "kept by the store", || {
            system.unregister_agent(&closing).unwrap();
        });
        let letters = system.dead_letters();
        assert_eq!(letters.len(), 2);
        for letter in &letters {
            let DeadMessage::Message(message) = &letter.message else {
                panic!("a message")
            };
            assert!(message.payload::<T>().is_some(), "{}", kind.name);
        }
        kind.expect_drops(2, "drained letters", || drop(letters));
        // Queued for `full` and for a new agent when the system shuts down: buried,
        // then dropped with the system.
        let late = register(&system);
        system.send(&late, cast(kind)).unwrap();
        kind.expect_drops(0, "buried at shutdown", || system.shutdown().unwrap());
        assert_eq!(system.dead_letter_stats().kept, 2);
        kind.expect_drops(2, "the store dropped", || drop(system));
    });
}

/// `send_after`: a cancelled timer drops its message; a fired one delivers it.
fn timer_path<T: Any + Send>(kind: &Kind<T>) {
    let (system, clock) = manual_system(RouterConfig::default(), 0);
    let (pid, inbox) = registered(&system);
    kind.expect_drops(1, "a cancelled timer's message", || {
        let timer = system
            .send_after(&pid, cast(kind), Duration::from_secs(1))
            .unwrap();
        assert!(system.cancel_timer(timer));
    });
    kind.expect_drops(1, "a fired timer's message", || {
        system
            .send_after(&pid, cast(kind), Duration::from_secs(1))
            .unwrap();
        clock.advance(Duration::from_secs(1));
        system.run_due_timers();
        let message = inbox.try_receive().unwrap().expect("delivered");
        let AgentMessage::Cast { payload, .. } = message else {
            panic!("a cast")
        };
        drop(kind_take(kind, payload));
    });
    kind.expect_drops(1, "a pending timer at shutdown", || {
        system
            .send_after(&pid, cast(kind), Duration::from_secs(1))
            .unwrap();
        system.shutdown().unwrap();
        drop(inbox);
        drop(system);
    });
}

/// `TypedMessage::into_message` builds the same cast.
fn typed_path<T: Any + Send>(kind: &Kind<T>) {
    kind.expect_drops(1, "a typed message", || {
        let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
        mailbox
            .send(TypedMessage::new(kind.make()).into_message())
            .unwrap();
        let message = mailbox.try_receive().unwrap().unwrap();
        assert!(message.payload::<T>().is_some());
    });
}

// ===== the tests =====

#[test]
fn kinds_fit_as_documented() {
    assert!(Payload::fits_inline::<OneWord>());
    assert!(Payload::fits_inline::<ThreeWords>());
    assert_eq!(std::mem::size_of::<ThreeWords>(), Payload::INLINE_BYTES);
    assert!(!Payload::fits_inline::<TenWords>());
    assert!(!Payload::fits_inline::<Aligned16>());
    assert!(Payload::fits_inline::<ZeroSized>());
}

#[test]
fn mailbox_drops_once() {
    for_each_kind(mailbox);
}

#[test]
fn call_drops_once() {
    for_each_kind(call);
}

#[test]
fn reply_drops_once() {
    for_each_kind(reply);
}

#[test]
fn dead_letters_drop_once() {
    for_each_kind(dead_letters);
}

#[test]
fn timers_drop_once() {
    for_each_kind(timers);
}

#[test]
fn typed_messages_drop_once() {
    for_each_kind(typed);
}

#[test]
fn zero_sized_on_every_path() {
    let kind = Kind {
        name: "zero-sized",
        make: Box::new(|| ZeroSized),
        drops: Box::new(|| ZERO_SIZED_DROPS.load(SeqCst)),
    };
    let paths: [fn(&dyn Any); 6] = [mailbox, call, reply, dead_letters, timers, typed];
    for path in paths {
        path(&kind);
    }
}

// ===== envelopes =====

/// An envelope's JSON travels as its cast and, refused, comes back into its envelope:
/// the same `String` buffer both ways, never a copy.
#[test]
fn an_envelope_travels_without_a_copy() {
    let mut config = RouterConfig::default();
    config.delivery_config.guarantee = DeliveryGuarantee::AtMostOnce;
    let (system, _clock) = manual_system(config, 1);
    let (pid, inbox) = registered(&system);
    let envelope = |text: &str| {
        MessageEnvelope::new(
            pid.clone(),
            "text".into(),
            json!(text),
            DeliveryOptions::default(),
        )
    };
    let buffer_of = |value: &serde_json::Value| value.as_str().unwrap().as_ptr();

    let delivered = envelope("delivered");
    let at = buffer_of(&delivered.payload);
    system.send_message(delivered).unwrap();
    let refused = envelope("refused");
    let refused_at = buffer_of(&refused.payload);
    assert!(matches!(
        system.send_message(refused),
        Err(MessagingError::MailboxFull(_))
    ));

    let message = inbox.try_receive().unwrap().unwrap();
    let value = message.payload::<serde_json::Value>().unwrap();
    assert_eq!(buffer_of(value), at, "the cast carries the envelope's JSON");
    let letters = system.dead_letters();
    let [letter] = &letters[..] else {
        panic!("one dead letter, got {letters:?}")
    };
    let DeadMessage::Envelope(back) = &letter.message else {
        panic!("the envelope, back from its cast")
    };
    assert_eq!(
        buffer_of(&back.payload),
        refused_at,
        "no copy on the way back"
    );
    system.shutdown().unwrap();
}

// ===== allocations =====

const WARM_UP: u64 = 10_000;
const MEASURED: u64 = 10_000;

/// Allocations on this thread while `f` runs.
fn allocations_in(f: impl FnOnce()) -> common::alloc::Counts {
    let before = common::alloc::counts();
    f();
    let after = common::alloc::counts();
    common::alloc::Counts {
        allocations: after.allocations - before.allocations,
        allocated_bytes: after.allocated_bytes - before.allocated_bytes,
        held_bytes: after.held_bytes - before.held_bytes,
    }
}

/// Casts `n` payloads made by `make` through `mailbox` one at a time, taking each.
fn cast_and_take<T: Any + Send>(
    mailbox: &AgentMailbox,
    send: &dyn Fn(AgentMessage),
    n: u64,
    make: fn(u64) -> T,
) {
    for i in 0..n {
        send(AgentMessage::cast(AgentPid::nil(), make(i)));
        let AgentMessage::Cast { payload, .. } = mailbox.try_receive().unwrap().unwrap() else {
            panic!("a cast")
        };
        std::hint::black_box(payload.take::<T>().expect("a T"));
    }
}

/// A `u64` cast into a mailbox, received and taken: no allocation once warm. The same
/// with a four-word payload allocates one box per message, which shows the counter
/// counts.
#[test]
fn a_small_cast_allocates_nothing() {
    let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    let sender = mailbox.sender();
    let send = |m| sender.try_send(m, MessagePriority::Normal).unwrap();
    cast_and_take(&mailbox, &send, WARM_UP, |i| i);
    let small = allocations_in(|| cast_and_take(&mailbox, &send, MEASURED, |i| i));
    assert_eq!(small.allocations, 0, "{small:?} for {MEASURED} u64 casts");

    let large = allocations_in(|| cast_and_take(&mailbox, &send, MEASURED, |i| [i; 4]));
    assert_eq!(
        large.allocations, MEASURED,
        "{large:?}: one box per [u64; 4]"
    );
    assert_eq!(large.allocated_bytes, MEASURED * 32);
    assert_eq!(large.held_bytes, 0);
}

/// The same through the system by pid (`MessageSystem::send`): the table lookup and
/// the engine allocate nothing for a cast either.
#[test]
fn a_small_cast_by_pid_allocates_nothing() {
    let system = MessageSystem::new(RouterConfig::default());
    let (pid, mailbox) = registered(&system);
    let send = |m| system.send(&pid, m).unwrap();
    cast_and_take(&mailbox, &send, WARM_UP, |i| i);
    let small = allocations_in(|| cast_and_take(&mailbox, &send, MEASURED, |i| i));
    assert_eq!(small.allocations, 0, "{small:?} for {MEASURED} u64 casts");
    system.shutdown().unwrap();
}

/// A call with a `u64` each way, replied with `Payload::new`: the payloads allocate
/// nothing; what remains is the call's reply slot (at most one allocation per call).
#[test]
fn a_small_call_allocates_only_its_reply_slot() {
    let mailbox = AgentMailbox::new(AgentPid::new(), MailboxConfig::default());
    let sender = mailbox.sender();
    let one_call = |i: u64| {
        let (call, reply) = AgentMessage::call(AgentPid::nil(), i, TIMEOUT);
        sender.try_send(call, MessagePriority::Normal).unwrap();
        let AgentMessage::Call {
            payload, reply_to, ..
        } = mailbox.try_receive().unwrap().unwrap()
        else {
            panic!("a call")
        };
        let n: u64 = payload.take().unwrap();
        reply_to.send(Payload::new(n + 1)).unwrap();
        assert_eq!(reply.recv().unwrap().take::<u64>().unwrap(), i + 1);
    };
    (0..WARM_UP).for_each(one_call);
    let calls = allocations_in(|| (0..MEASURED).for_each(one_call));
    assert!(
        calls.allocations <= MEASURED,
        "{calls:?} for {MEASURED} calls: more than the reply slot"
    );
    assert_eq!(calls.held_bytes, 0);
}
