//! Reply-slot models: a reply racing the caller's drop, `recv`, timeout and `.await`.

use loom::sync::Arc;
use terraphim_agent_messaging::{reply_channel, Payload, ReplyError};

use crate::{assert_all_dropped, model, spawn};

/// The token inside a reply payload.
#[track_caller]
fn token_of(payload: Payload) -> Arc<()> {
    *payload.downcast::<Arc<()>>().expect("reply is the token")
}

/// A reply races the caller dropping its receiver: `send` is `Ok` (the value is freed
/// with the slot) or hands the value back; nothing leaks.
#[test]
fn reply_send_races_receiver_drop() {
    model(|| {
        let token = Arc::new(());
        let (tx, rx) = reply_channel();
        let t = token.clone();
        let replier = spawn(move || match tx.send(Box::new(t)) {
            Ok(()) => true,
            Err(back) => {
                drop(token_of(back));
                false
            }
        });
        drop(rx);
        replier.join().unwrap();
        assert_all_dropped(&token);
    });
}

/// A reply races a blocked `recv`: the caller always gets the value (no lost wake-up).
#[test]
fn reply_send_wakes_recv() {
    model(|| {
        let token = Arc::new(());
        let (tx, rx) = reply_channel();
        let t = token.clone();
        let replier = spawn(move || tx.send(Box::new(t)).is_ok());
        let got = token_of(rx.recv().expect("the reply arrives"));
        assert!(Arc::ptr_eq(&got, &token));
        assert!(
            replier.join().unwrap(),
            "the caller was waiting: send is Ok"
        );
        drop(got);
        assert_all_dropped(&token);
    });
}

/// The callee drops the call without replying while the caller waits: `Closed`.
#[test]
fn reply_sender_drop_wakes_recv() {
    model(|| {
        let (tx, rx) = reply_channel();
        let replier = spawn(move || drop(tx));
        assert_eq!(rx.recv().unwrap_err(), ReplyError::Closed);
        replier.join().unwrap();
    });
}

/// A reply races `recv_timeout` (under loom the deadline passes after one check): the
/// caller sees exactly one outcome; a reply handed back means the caller timed out.
#[test]
fn reply_send_races_timeout() {
    model(|| {
        let token = Arc::new(());
        let (tx, rx) = reply_channel();
        let t = token.clone();
        let replier = spawn(move || match tx.send(Box::new(t)) {
            Ok(()) => true,
            Err(back) => {
                drop(token_of(back));
                false
            }
        });
        let outcome = rx.recv_timeout(std::time::Duration::from_secs(1));
        let sent = replier.join().unwrap();
        match outcome {
            Ok(value) => {
                assert!(sent, "a received reply was sent Ok");
                drop(token_of(value));
            }
            Err(e) => assert_eq!(e, ReplyError::Timeout),
        }
        assert_all_dropped(&token);
    });
}

/// The async path: the caller awaits the receiver (a `Waker` in the wait cell).
#[test]
fn reply_send_wakes_await() {
    model(|| {
        let token = Arc::new(());
        let (tx, rx) = reply_channel();
        let t = token.clone();
        let replier = spawn(move || tx.send(Box::new(t)).is_ok());
        let got = token_of(crate::block_on(rx).expect("the reply arrives"));
        assert!(replier.join().unwrap());
        drop(got);
        assert_all_dropped(&token);
    });
}

/// Two calls in a row from one thread, each answered by a thread of its own: the first
/// call's slot is recycled for the second when its replier is gone by then (`Arc`'s
/// uniqueness check), and either way the second caller gets its own reply, never the
/// first's state or value.
#[test]
fn reply_slot_recycled_for_the_next_call() {
    model(|| {
        let token = Arc::new(());
        for round in 0..2 {
            let (tx, rx) = reply_channel();
            let t = token.clone();
            let replier = spawn(move || tx.send(Box::new((round, t))).is_ok());
            let got = rx.recv().expect("the reply arrives");
            let (seq, got) = *got.downcast::<(i32, Arc<()>)>().expect("a (round, token)");
            assert_eq!(seq, round, "a reply of this call");
            assert!(replier.join().unwrap());
            drop(got);
        }
        assert_all_dropped(&token);
    });
}
